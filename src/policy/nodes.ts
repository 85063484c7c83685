/**
 * Small helpers over libpg-query's protobuf-JSON parse tree. A node is an object
 * with a single key naming its type (`{ FuncCall: {...} }`); fields holding their
 * default value (0, false, '', empty list) are omitted by the serializer.
 */

/** Any JSON object of the tree. */
export type JsonObject = { [key: string]: unknown };

export function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The type tag and body of a wrapped node (`{ SelectStmt: {...} }`), or undefined. */
export function unwrap(node: unknown): { tag: string; body: JsonObject } | undefined {
  if (!isObject(node)) return undefined;
  for (const key in node) {
    const body = node[key];
    if (isTag(key) && isObject(body)) return { tag: key, body };
    return undefined;
  }
  return undefined;
}

/** Node type names start with an upper-case letter; field names never do. */
export function isTag(key: string): boolean {
  const c = key.charCodeAt(0);
  return c >= 65 && c <= 90;
}

export function asArray(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

export function str(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

/** `[{String:{sval:'pg_catalog'}}, {String:{sval:'lo_import'}}]` → ['pg_catalog', 'lo_import']. */
export function nameList(value: unknown): string[] {
  const out: string[] = [];
  for (const item of asArray(value)) {
    const n = unwrap(item);
    if (n?.tag === 'String') out.push(str(n.body.sval) ?? '');
  }
  return out;
}

/** The location field of a node body, when the parser recorded one (byte offset). */
export function location(body: JsonObject | undefined): number | undefined {
  const loc = body?.location;
  return typeof loc === 'number' && loc >= 0 ? loc : undefined;
}

/** A constant the policy can reason about. */
export type Constant =
  | { type: 'string'; value: string }
  | { type: 'number'; value: number; text: string }
  | { type: 'boolean'; value: boolean }
  | { type: 'null' };

/**
 * How many times the policy has looked for a constant's value. A decision made
 * while this did not move read no literal, so it holds for every query string
 * of the same literal shape (see shape.ts and the decision cache).
 */
let constantReads = 0;

export function constantReadCount(): number {
  return constantReads;
}

/**
 * The constant an expression denotes, looking through casts (`'x'::text`,
 * `interval '1 min'`). Undefined when the expression is not a literal.
 */
export function constantOf(node: unknown): Constant | undefined {
  constantReads++;
  const n = unwrap(node);
  if (!n) return undefined;
  if (n.tag === 'TypeCast') return constantOf(n.body.arg);
  if (n.tag !== 'A_Const') return undefined;
  const c = n.body;
  if (c.isnull === true) return { type: 'null' };
  if (isObject(c.sval)) return { type: 'string', value: str(c.sval.sval) ?? '' };
  if (isObject(c.ival)) {
    const v = typeof c.ival.ival === 'number' ? c.ival.ival : 0;
    return { type: 'number', value: v, text: String(v) };
  }
  if (isObject(c.fval)) {
    const text = str(c.fval.fval) ?? '0';
    return { type: 'number', value: Number(text), text };
  }
  if (isObject(c.boolval)) return { type: 'boolean', value: c.boolval.boolval === true };
  if (isObject(c.bsval)) return { type: 'string', value: str(c.bsval.bsval) ?? '' };
  return undefined;
}

/** A constant as the text PostgreSQL's GUC machinery would see for it. */
export function constantText(c: Constant): string | undefined {
  switch (c.type) {
    case 'string':
      return c.value;
    case 'number':
      return c.text;
    case 'boolean':
      return c.value ? 'true' : 'false';
    case 'null':
      return undefined;
  }
}
