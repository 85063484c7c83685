# syntax=docker/dockerfile:1
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev --ignore-scripts

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
USER node
# 6432: PostgreSQL clients; 9432: /metrics, /healthz, /readyz (with --http-listen).
EXPOSE 6432 9432
ENTRYPOINT ["node", "--max-semi-space-size=2", "dist/cli.js"]
CMD ["--listen", "0.0.0.0:6432"]
