/**
 * The configuration schema. Every object refuses unknown keys, so a typo stops
 * the proxy instead of being ignored. Keys are snake_case as in the YAML file.
 */
/** Proxy-managed users, in the config file or in auth.users_file. */
export const usersSchema = {
  type: 'object',
  propertyNames: { minLength: 1, maxLength: 63 },
  additionalProperties: {
    type: 'object',
    additionalProperties: false,
    required: ['password', 'upstream_user', 'databases'],
    properties: {
      password: { type: 'string', minLength: 1 },
      upstream_user: { type: 'string', minLength: 1 },
      upstream_password_env: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' },
      upstream_password_file: { type: 'string', minLength: 1 },
      databases: { type: 'array', items: { type: 'string', minLength: 1 }, minItems: 1, uniqueItems: true },
    },
  },
} as const;

/** A users file holds just the users map. */
export const usersFileSchema = {
  type: 'object',
  additionalProperties: false,
  properties: { users: usersSchema },
} as const;

/** The most worker processes `workers` may ask for ("auto" included). */
export const MAX_WORKERS = 256;

export const configSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    workers: {
      description: `a whole number from 1 to ${MAX_WORKERS}, or "auto"`,
      anyOf: [{ type: 'integer', minimum: 1, maximum: MAX_WORKERS }, { const: 'auto' }],
    },
    listen: { type: 'string', pattern: '^(\\[[0-9a-fA-F:.]+\\]|[^:\\s]+):[0-9]{1,5}$' },
    upstream: {
      type: 'object',
      additionalProperties: false,
      properties: {
        url: { type: 'string', pattern: '^postgres(ql)?://' },
        host: { type: 'string', minLength: 1 },
        port: { type: 'integer', minimum: 1, maximum: 65535 },
        connect_timeout_ms: { type: 'integer', minimum: 100, maximum: 600000 },
        sslmode: { enum: ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'] },
        sslrootcert: { type: 'string', minLength: 1 },
        sslcert: { type: 'string', minLength: 1 },
        sslkey: { type: 'string', minLength: 1 },
        sslnegotiation: { enum: ['postgres', 'direct'] },
        require_auth: {
          type: 'array',
          items: { enum: ['password', 'md5', 'scram-sha-256', 'none'] },
          minItems: 1,
          uniqueItems: true,
        },
      },
    },
    client_tls: {
      type: 'object',
      additionalProperties: false,
      properties: {
        mode: { enum: ['disable', 'allow', 'require'] },
        cert_file: { type: 'string', minLength: 1 },
        key_file: { type: 'string', minLength: 1 },
        min_version: { enum: ['TLSv1.2', 'TLSv1.3'] },
      },
    },
    auth: {
      type: 'object',
      additionalProperties: false,
      properties: {
        mode: { enum: ['passthrough', 'proxy'] },
        allow_md5: { type: 'boolean' },
        users_file: { type: 'string', minLength: 1 },
        users: usersSchema,
      },
    },
    limits: {
      type: 'object',
      additionalProperties: false,
      properties: {
        max_client_connections: { type: 'integer', minimum: 1, maximum: 1000000 },
        max_message_bytes: { type: 'integer', minimum: 1024, maximum: 1073741823 },
        startup_timeout_ms: { type: 'integer', minimum: 100, maximum: 3600000 },
        max_connections_per_user: { type: 'integer', minimum: 1, maximum: 1000000 },
        idle_client_timeout_ms: { type: 'integer', minimum: 0, maximum: 604800000 },
        max_result_rows: { type: 'integer', minimum: 1 },
        max_result_bytes: { type: 'integer', minimum: 1 },
      },
    },
    shutdown_grace_ms: { type: 'integer', minimum: 0, maximum: 3600000 },
    audit: {
      type: 'object',
      additionalProperties: false,
      properties: {
        enabled: { type: 'boolean' },
        file: { type: 'string', minLength: 1 },
        include_text: { type: 'boolean' },
      },
    },
    http: {
      type: 'object',
      additionalProperties: false,
      properties: {
        listen: { type: 'string', pattern: '^(\\[[0-9a-fA-F:.]+\\]|[^:\\s]+):[0-9]{1,5}$' },
        admin: { type: 'boolean' },
      },
    },
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
    pool: {
      type: 'object',
      additionalProperties: false,
      properties: {
        enabled: { type: 'boolean' },
        max_idle: { type: 'integer', minimum: 0, maximum: 10000 },
        max_idle_total: { type: 'integer', minimum: 0, maximum: 100000 },
        idle_timeout_ms: { type: 'integer', minimum: 0, maximum: 604800000 },
        max_lifetime_ms: { type: 'integer', minimum: 0, maximum: 604800000 },
        reset_timeout_ms: { type: 'integer', minimum: 100, maximum: 600000 },
      },
    },
  },
} as const;
