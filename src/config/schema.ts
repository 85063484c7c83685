/**
 * The configuration schema. Every object refuses unknown keys, so a typo stops
 * the proxy instead of being ignored. Keys are snake_case as in the YAML file.
 */
export const configSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    listen: { type: 'string', pattern: '^(\\[[0-9a-fA-F:.]+\\]|[^:\\s]+):[0-9]{1,5}$' },
    upstream: {
      type: 'object',
      additionalProperties: false,
      properties: {
        url: { type: 'string', pattern: '^postgres(ql)?://' },
        host: { type: 'string', minLength: 1 },
        port: { type: 'integer', minimum: 1, maximum: 65535 },
        connect_timeout_ms: { type: 'integer', minimum: 100, maximum: 600000 },
      },
    },
    limits: {
      type: 'object',
      additionalProperties: false,
      properties: {
        max_client_connections: { type: 'integer', minimum: 1, maximum: 1000000 },
        max_message_bytes: { type: 'integer', minimum: 1024, maximum: 1073741823 },
        startup_timeout_ms: { type: 'integer', minimum: 100, maximum: 3600000 },
      },
    },
    shutdown_grace_ms: { type: 'integer', minimum: 0, maximum: 3600000 },
    log: {
      type: 'object',
      additionalProperties: false,
      properties: {
        level: { enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] },
      },
    },
    policy: {
      type: 'object',
      additionalProperties: false,
      properties: {
        allow_statements: { type: 'array', items: { type: 'string', minLength: 1 }, uniqueItems: true },
        functions: {
          type: 'object',
          additionalProperties: false,
          properties: {
            mode: { enum: ['denylist', 'allowlist'] },
            deny: { type: 'array', items: { type: 'string', minLength: 1 } },
            allow: { type: 'array', items: { type: 'string', minLength: 1 } },
          },
        },
        protected_settings: { type: 'array', items: { type: 'string', minLength: 1 } },
        setting_limits: {
          type: 'object',
          additionalProperties: { type: 'integer', minimum: 0 },
          propertyNames: { pattern: '^[a-z_][a-z0-9_]*$' },
        },
        max_sleep_seconds: { type: 'number', minimum: 0 },
        cache_size: { type: 'integer', minimum: 0, maximum: 10000000 },
      },
    },
    embedded: {
      type: 'object',
      additionalProperties: false,
      properties: {
        data_dir: { type: 'string', minLength: 1 },
        port: { type: 'integer', minimum: 0, maximum: 65535 },
      },
    },
  },
} as const;
