/**
 * The generic tree walk. Every object and every list under a statement is
 * visited, whatever its field names, so a field added by a new PostgreSQL
 * version cannot hide a function call or a write. Nodes the policy cares about
 * are recognized by their type tag wherever they appear. The walk is iterative:
 * deeply nested expressions cannot overflow the JavaScript stack.
 */
import { checkAttributeName, checkFuncCall, type FunctionPolicy } from './functions.js';
import { unknownFinding, type Finding } from './messages.js';
import {
  asArray,
  constantOf,
  isObject,
  isTag,
  location,
  nameList,
  str,
  unwrap,
  type JsonObject,
} from './nodes.js';
import type { SettingsPolicy } from './settings.js';
import { lockingRule, STATEMENT_RULES, type RuleResult } from './statements.js';
import { ReasonCode } from './types.js';

export interface WalkPolicy {
  settings: SettingsPolicy;
  functions: FunctionPolicy;
  /** Upper-cased command tags the operator allows despite the catalogue. */
  allowStatements: ReadonlySet<string>;
}

export interface StatementCheck {
  kind: string;
  finding?: Finding;
}

/** Refusals an operator may lift by listing the statement kind in allowStatements. */
const OVERRIDABLE: ReadonlySet<ReasonCode> = new Set<ReasonCode>([
  ReasonCode.Write,
  ReasonCode.Ddl,
  ReasonCode.Utility,
  ReasonCode.Copy,
  ReasonCode.Procedural,
  ReasonCode.TwoPhase,
  ReasonCode.Notify,
  ReasonCode.Unknown,
  ReasonCode.LockingClause,
]);

function effective(kind: string, f: Finding | undefined, policy: WalkPolicy): Finding | undefined {
  if (f === undefined) return undefined;
  if (OVERRIDABLE.has(f.code) && policy.allowStatements.has(kind.toUpperCase())) return undefined;
  return f;
}

/** How messages describe a statement nested inside one of these. */
const VIA: Readonly<Record<string, string>> = {
  CommonTableExpr: 'in a WITH query',
  SubLink: 'in a subquery',
  RangeSubselect: 'in a subquery',
  ExplainStmt: 'inside EXPLAIN',
  PrepareStmt: 'inside PREPARE',
  DeclareCursorStmt: 'inside DECLARE CURSOR',
  CopyStmt: 'inside COPY',
};

/** Checks one node met during the walk (not the statement at the top). */
function checkNode(
  tag: string,
  body: JsonObject,
  via: string | undefined,
  policy: WalkPolicy,
): Finding | undefined {
  switch (tag) {
    case 'FuncCall':
      return checkFuncCall(body, policy.functions);
    case 'A_Indirection': {
      const arg = unwrap(body.arg);
      const offset = arg ? location(arg.body) : undefined;
      for (const item of asArray(body.indirection)) {
        const n = unwrap(item);
        if (n?.tag !== 'String') continue;
        const f = checkAttributeName(str(n.body.sval) ?? '', policy.functions, offset);
        if (f) return f;
      }
      return undefined;
    }
    case 'ColumnRef': {
      // t.fn, schema.t.fn: any name after the first may be read as fn(row).
      const fields = asArray(body.fields);
      for (let i = 1; i < fields.length; i++) {
        const n = unwrap(fields[i]);
        if (n?.tag !== 'String') continue;
        const f = checkAttributeName(str(n.body.sval) ?? '', policy.functions, location(body));
        if (f) return f;
      }
      return undefined;
    }
    case 'LockingClause': {
      const r = lockingRule(body);
      return effective(r.kind, r.finding, policy);
    }
    default: {
      const rule = STATEMENT_RULES.get(tag);
      if (rule) {
        const r: RuleResult = rule(body, { settings: policy.settings, via });
        return effective(r.kind, r.finding, policy);
      }
      if (tag.endsWith('Stmt')) return effective(tag, unknownFinding(tag), policy);
      return undefined;
    }
  }
}

/** Visits everything below `body`; returns the first refusal found. */
function walkBelow(tag: string, body: JsonObject, policy: WalkPolicy): Finding | undefined {
  const values: unknown[] = [body];
  const vias: (string | undefined)[] = [VIA[tag]];
  while (values.length > 0) {
    const value = values.pop();
    const via = vias.pop();
    if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) {
        const item: unknown = value[i];
        if (typeof item === 'object' && item !== null) {
          values.push(item);
          vias.push(via);
        }
      }
      continue;
    }
    if (!isObject(value)) continue;
    const keys = Object.keys(value);
    for (let i = keys.length - 1; i >= 0; i--) {
      const key = keys[i] as string;
      const child = value[key];
      if (typeof child !== 'object' || child === null) continue;
      let childVia = via;
      if (isTag(key) && isObject(child)) {
        const f = checkNode(key, child, via, policy);
        if (f) return f;
        childVia = VIA[key] ?? via;
      }
      values.push(child);
      vias.push(childVia);
    }
  }
  return undefined;
}

/** The command tag of a top-level statement and the first reason to refuse it, if any. */
export function checkStatement(stmt: unknown, policy: WalkPolicy): StatementCheck {
  const top = unwrap(resolveSettingsLookup(stmt));
  if (!top) return { kind: 'UNKNOWN', finding: unknownFinding('(none)') };
  const rule = STATEMENT_RULES.get(top.tag);
  if (!rule) {
    const f = effective(top.tag, unknownFinding(top.tag), policy);
    if (f) return { kind: 'UNKNOWN', finding: f };
    return { kind: top.tag, ...optional(walkBelow(top.tag, top.body, policy)) };
  }
  const r = rule(top.body, { settings: policy.settings, via: undefined });
  const own = effective(r.kind, r.finding, policy);
  if (own) return { kind: r.kind, finding: own };
  return { kind: r.kind, ...optional(walkBelow(top.tag, top.body, policy)) };
}

function optional(f: Finding | undefined): { finding?: Finding } {
  return f === undefined ? {} : { finding: f };
}

/**
 * pg_dump (every release since August 2024) sets one setting by looking its name
 * up: `SELECT set_config(name, '...', false) FROM pg_settings WHERE name = 'x'`.
 * The row filter makes the name the constant 'x', so the statement is read as
 * `SELECT set_config('x', '...', false)` and checked like that. Exactly this
 * shape only: one relation pg_settings, `name = '<constant>'` as the whole
 * filter, set_config(name, ...) as the output columns, nothing else around it.
 */
function resolveSettingsLookup(stmt: unknown): unknown {
  const top = unwrap(stmt);
  if (top?.tag !== 'SelectStmt') return stmt;
  const b = top.body;
  const only = new Set(['targetList', 'fromClause', 'whereClause', 'limitOption', 'op']);
  if (Object.keys(b).some((k) => !only.has(k)) || b.op !== 'SETOP_NONE') return stmt;
  const from = asArray(b.fromClause);
  const rel = from.length === 1 ? unwrap(from[0]) : undefined;
  if (rel?.tag !== 'RangeVar' || rel.body.relname !== 'pg_settings' || rel.body.alias !== undefined)
    return stmt;
  if (rel.body.schemaname !== undefined && rel.body.schemaname !== 'pg_catalog') return stmt;
  const where = unwrap(b.whereClause);
  if (where?.tag !== 'A_Expr' || where.body.kind !== 'AEXPR_OP') return stmt;
  if (nameList(where.body.name).join('.') !== '=') return stmt;
  const isNameColumn = (n: unknown): boolean => {
    const c = unwrap(n);
    return c?.tag === 'ColumnRef' && nameList(c.body.fields).join('.') === 'name';
  };
  const [l, r] = [where.body.lexpr, where.body.rexpr];
  const value = isNameColumn(l) ? constantOf(r) : isNameColumn(r) ? constantOf(l) : undefined;
  if (value?.type !== 'string') return stmt;
  const targets = asArray(b.targetList);
  const rewritten: unknown[] = [];
  for (const t of targets) {
    const rt = unwrap(t);
    const call = unwrap(rt?.body.val);
    if (rt?.tag !== 'ResTarget' || call?.tag !== 'FuncCall') return stmt;
    const fn = nameList(call.body.funcname).map((p) => p.toLowerCase());
    if (fn.join('.') !== 'set_config' && fn.join('.') !== 'pg_catalog.set_config') return stmt;
    const args = asArray(call.body.args);
    if (!isNameColumn(args[0])) return stmt;
    const named = [{ A_Const: { sval: { sval: value.value } } }, ...args.slice(1)];
    rewritten.push({ ResTarget: { ...rt.body, val: { FuncCall: { ...call.body, args: named } } } });
  }
  return { SelectStmt: { ...b, targetList: rewritten } };
}
