/**
 * JSON logs with pino on stdout. Redaction paths are fixed here, once, so no
 * call site can forget them: nothing that may hold a password is ever printed.
 */
import { pino, type Logger } from 'pino';

export type { Logger };

export const REDACT_PATHS = [
  'password',
  '*.password',
  'params.password',
  'upstream.password',
  'secret',
  '*.secret',
];

/**
 * Log lines are written in batches of at least 4 KiB, or every 200 ms, and at
 * exit: a busy proxy writing an audit record per statement then makes a few
 * hundred writes a second, not one per line.
 *
 * `shared`: several processes (worker processes) write to the same stdout. A
 * write of at most PIPE_BUF (4096) bytes to a pipe is atomic, and the
 * destination joins whole lines up to maxWrite bytes into one write, so with
 * writes of 2 to 4 KiB lines from different processes never interleave (a
 * single line over 4 KiB may).
 */
export function logDestination(
  to: { fd: number } | { dest: string; mkdir: true },
  opts: { shared?: boolean } = {},
): pino.DestinationStream {
  const size = opts.shared ? { minLength: 2048, maxWrite: 4096 } : { minLength: 4096 };
  return pino.destination({ ...to, ...size, sync: false, periodicFlush: 200 });
}

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'pg-readonly-proxy' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    },
    destination ?? logDestination({ fd: 1 }),
  );
}
