/**
 * npm run bench:table: copies the last benchmark report (bench/results/latest.md)
 * into README.md, between <!-- bench-table:start --> and <!-- bench-table:end -->.
 * A short run or one limited to some cells or targets is refused (it is a quick
 * check, not the numbers to publish) unless --force is given.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '..');
const README = path.join(ROOT, 'README.md');
const LATEST_MD = path.join(ROOT, 'bench', 'results', 'latest.md');
const LATEST_JSON = path.join(ROOT, 'bench', 'results', 'latest.json');
const START = '<!-- bench-table:start -->';
const END = '<!-- bench-table:end -->';

function fail(message: string): never {
  process.stderr.write(`bench:table: ${message}\n`);
  process.exit(1);
}

function main(): void {
  const force = process.argv.includes('--force');
  if (!existsSync(LATEST_MD)) fail('no bench/results/latest.md yet: run npm run bench first');
  if (existsSync(LATEST_JSON)) {
    const { meta } = JSON.parse(readFileSync(LATEST_JSON, 'utf8')) as {
      meta?: { mode?: string; partial?: boolean };
    };
    if (!force && (meta?.mode !== 'full' || meta.partial)) {
      fail(
        `the last run was ${meta?.mode === 'full' ? 'limited to some cells or targets' : 'a short run'}: ` +
          'run the full benchmark (npm run bench), or pass --force to copy it anyway',
      );
    }
  }
  const text = readFileSync(README, 'utf8');
  const at = text.indexOf(START);
  const end = text.indexOf(END);
  if (at < 0 || end < 0 || end < at) {
    fail(`README.md has no ${START} ... ${END} section: add both markers where the table belongs`);
  }
  const report = readFileSync(LATEST_MD, 'utf8').trim();
  writeFileSync(README, `${text.slice(0, at + START.length)}\n${report}\n${text.slice(end)}`);
  process.stdout.write(`README.md: benchmark section replaced from bench/results/latest.md\n`);
}

main();
