/**
 * The text `pg-readonly-proxy check "SQL"` prints: one line per statement,
 *   ALLOW  SELECT             select 1
 *   DENY   INSERT             write (25006): pg-readonly-proxy: INSERT is not allowed: ... Hint: ...
 * and a single DENY line when the string cannot be parsed.
 */
import type { Decision, Refusal } from './types.js';

const KIND_WIDTH = 18;

function oneLine(text: string, max = 60): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

function describe(r: Refusal): string {
  let line = `${r.code} (${r.sqlstate}): ${r.message}`;
  if (r.detail) line += ` Detail: ${r.detail}`;
  if (r.hint) line += ` Hint: ${r.hint}`;
  if (r.position !== undefined) line += ` [at character ${r.position}]`;
  return line;
}

export function formatCheckReport(sql: string, decision: Decision): string {
  const lines: string[] = [];
  if (decision.statements.length === 0) {
    if (decision.refusal)
      lines.push(`DENY   ${decision.refusal.kind.padEnd(KIND_WIDTH)} ${describe(decision.refusal)}`);
    else lines.push(`ALLOW  ${'(empty)'.padEnd(KIND_WIDTH)} ${oneLine(sql) || 'no statements'}`);
    return lines.join('\n');
  }
  for (const s of decision.statements) {
    const kind = s.kind.padEnd(KIND_WIDTH);
    if (s.refusal) lines.push(`DENY   ${kind} ${describe(s.refusal)}  -- ${oneLine(s.text, 40)}`);
    else lines.push(`ALLOW  ${kind} ${oneLine(s.text)}`);
  }
  return lines.join('\n');
}
