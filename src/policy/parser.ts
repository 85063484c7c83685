/**
 * The parser: libpg-query, PostgreSQL's own grammar compiled to WebAssembly.
 * It must be loaded once (asynchronously) before classify() runs.
 */
import { loadModule, parseSync } from 'libpg-query';

let loaded: Promise<void> | undefined;
let ready = false;

/** Loads the parser; later calls return the same promise. */
export function loadParser(): Promise<void> {
  loaded ??= loadModule().then(() => {
    ready = true;
  });
  return loaded;
}

export function parserReady(): boolean {
  return ready;
}

export interface ParsedStatement {
  stmt: unknown;
  /** Byte offset of the statement's text. */
  location: number;
  /** Byte length, or undefined for "to the end". */
  length: number | undefined;
}

export type ParseOutcome =
  { ok: true; statements: ParsedStatement[] } | { ok: false; message: string; cursor: number | undefined };

const EMPTY_QUERY = 'Query cannot be empty';

export function parse(sql: string): ParseOutcome {
  let tree: unknown;
  try {
    tree = parseSync(sql);
  } catch (e) {
    const err = e as { message?: unknown; sqlDetails?: { message?: unknown; cursorPosition?: unknown } };
    const message =
      typeof err.sqlDetails?.message === 'string' ? err.sqlDetails.message : String(err.message ?? e);
    if (message === EMPTY_QUERY) return { ok: true, statements: [] };
    const cursor = err.sqlDetails?.cursorPosition;
    return { ok: false, message, cursor: typeof cursor === 'number' && cursor >= 0 ? cursor : undefined };
  }
  const stmts = (tree as { stmts?: unknown }).stmts;
  const statements: ParsedStatement[] = [];
  if (Array.isArray(stmts)) {
    for (const raw of stmts as Array<{ stmt?: unknown; stmt_location?: unknown; stmt_len?: unknown }>) {
      const location = typeof raw.stmt_location === 'number' ? raw.stmt_location : 0;
      const len = typeof raw.stmt_len === 'number' && raw.stmt_len > 0 ? raw.stmt_len : undefined;
      statements.push({ stmt: raw.stmt, location, length: len });
    }
  }
  return { ok: true, statements };
}
