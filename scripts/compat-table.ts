/**
 * Writes the README's compatibility table from the compatibility suite's last
 * run (test/compat/results/pg<major>/*.json, written by test/compat/compat.ts):
 * one row per client, one column per PostgreSQL version, and below it every
 * scenario. Usage: npm run compat:table (after npm run test:compat).
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Record as CompatRecord } from '../test/compat/compat.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const resultsDir = path.join(root, 'test', 'compat', 'results');
const readme = path.join(root, 'README.md');
const START = '<!-- compat-table:start -->';
const END = '<!-- compat-table:end -->';

type Cell = { passed: number; failed: number; skipped: string[] };

function load(): Map<number, CompatRecord[]> {
  const byVersion = new Map<number, CompatRecord[]>();
  if (!existsSync(resultsDir)) return byVersion;
  for (const dir of readdirSync(resultsDir)) {
    const m = /^pg(\d+)$/.exec(dir);
    if (!m) continue;
    const records: CompatRecord[] = [];
    for (const file of readdirSync(path.join(resultsDir, dir)).sort()) {
      if (file.endsWith('.json')) {
        records.push(
          ...(JSON.parse(readFileSync(path.join(resultsDir, dir, file), 'utf8')) as CompatRecord[]),
        );
      }
    }
    byVersion.set(Number(m[1]), records);
  }
  return byVersion;
}

function summary(cell: Cell | undefined): string {
  if (!cell) return 'not run';
  const total = cell.passed + cell.failed + cell.skipped.length;
  if (cell.failed > 0) return `**${cell.failed} of ${total} failed**`;
  if (cell.skipped.length === total) return `skipped: ${[...new Set(cell.skipped)].join('; ')}`;
  if (cell.skipped.length > 0) return `${cell.passed} of ${total} pass, ${cell.skipped.length} skipped`;
  return `pass (${cell.passed})`;
}

function outcome(r: CompatRecord | undefined): string {
  if (!r) return 'not run';
  const o = r.outcome;
  return o.status === 'skipped' ? `skipped: ${o.reason}` : o.status === 'passed' ? 'pass' : '**FAIL**';
}

export function renderTable(byVersion: Map<number, CompatRecord[]>): string {
  const versions = [...byVersion.keys()].sort((a, b) => a - b);
  if (versions.length === 0)
    return '_No results yet: run `npm run test:compat`, then `npm run compat:table`._';
  const clients = [...new Set(versions.flatMap((v) => byVersion.get(v)!.map((r) => r.client)))].sort();
  const cells = new Map<string, Cell>();
  for (const v of versions) {
    for (const r of byVersion.get(v)!) {
      const key = `${r.client}\0${v}`;
      const cell = cells.get(key) ?? { passed: 0, failed: 0, skipped: [] };
      const o = r.outcome;
      if (o.status === 'skipped') cell.skipped.push(o.reason);
      else if (o.status === 'passed') cell.passed++;
      else cell.failed++;
      cells.set(key, cell);
    }
  }
  const head = `| Client | ${versions.map((v) => `PostgreSQL ${v}`).join(' | ')} |`;
  const rule = `| --- | ${versions.map(() => '---').join(' | ')} |`;
  const rows = clients.map(
    (c) => `| ${c} | ${versions.map((v) => summary(cells.get(`${c}\0${v}`))).join(' | ')} |`,
  );
  const details: string[] = [];
  for (const c of clients) {
    const scenarios = [
      ...new Set(
        versions.flatMap((v) =>
          byVersion
            .get(v)!
            .filter((r) => r.client === c)
            .map((r) => r.scenario),
        ),
      ),
    ];
    details.push(`| **${c}** | ${versions.map(() => '').join(' | ')} |`);
    for (const s of scenarios) {
      const find = (v: number) => byVersion.get(v)!.find((r) => r.client === c && r.scenario === s);
      details.push(`| ${s} | ${versions.map((v) => outcome(find(v))).join(' | ')} |`);
    }
  }
  return [
    head,
    rule,
    ...rows,
    '',
    '<details><summary>Every scenario</summary>',
    '',
    `| Scenario | ${versions.map((v) => `PostgreSQL ${v}`).join(' | ')} |`,
    rule,
    ...details,
    '',
    '</details>',
  ].join('\n');
}

function main(): void {
  const text = readFileSync(readme, 'utf8');
  const at = text.indexOf(START);
  const end = text.indexOf(END);
  if (at < 0 || end < at) throw new Error(`README.md has no ${START} ... ${END} section`);
  const table = renderTable(load());
  writeFileSync(readme, `${text.slice(0, at + START.length)}\n${table}\n${text.slice(end)}`);
  process.stdout.write(`${table}\n`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
