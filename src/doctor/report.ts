/**
 * The doctor's report, as text for people (grouped by severity, most severe
 * first, with a summary line) or as JSON for scripts. Pure.
 */
import type { DoctorFacts } from './facts.js';
import {
  SEVERITIES,
  sortFindings,
  summarize,
  type Finding,
  type Severity,
  type Summary,
} from './severity.js';

export interface DoctorReport {
  server: {
    version: string;
    versionNum: number;
    target: string;
    sslmode: string;
    /** The TLS the server reports for the doctor's connection; null: none. */
    tls: { version: string; cipher: string } | null;
  };
  role: {
    name: string;
    proxyUser?: string;
    database: string;
    superuser: boolean;
    createrole: boolean;
    createdb: boolean;
    replication: boolean;
    bypassrls: boolean;
  };
  findings: Finding[];
  summary: Summary;
}

export function buildReport(
  facts: DoctorFacts,
  findings: readonly Finding[],
  failOn: Severity,
): DoctorReport {
  const { role, server, connection } = facts;
  return {
    server: {
      version: server.version,
      versionNum: server.versionNum,
      target: connection.target,
      sslmode: connection.sslmode,
      tls: connection.tls ?? null,
    },
    role: {
      name: role.name,
      ...(role.proxyUser !== undefined ? { proxyUser: role.proxyUser } : {}),
      database: role.database,
      superuser: role.superuser,
      createrole: role.createrole,
      createdb: role.createdb,
      replication: role.replication,
      bypassrls: role.bypassrls,
    },
    findings: sortFindings(findings),
    summary: summarize(findings, failOn),
  };
}

export function formatJson(report: DoctorReport): string {
  return JSON.stringify(report, null, 2);
}

/** Wraps text at `width` columns, every line starting with `indent`. */
export function wrap(text: string, width: number, indent: string): string {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter((w) => w !== '')) {
    if (line !== '' && indent.length + line.length + 1 + word.length > width) {
      lines.push(indent + line);
      line = word;
    } else {
      line = line === '' ? word : `${line} ${word}`;
    }
  }
  if (line !== '') lines.push(indent + line);
  return lines.join('\n');
}

export function formatSummary(summary: Summary): string {
  const counts = [...SEVERITIES]
    .reverse()
    .map((s) => `${summary.counts[s]} ${s}`)
    .join(', ');
  const verdict =
    summary.exitCode === 0
      ? `nothing at ${summary.failOn} or above`
      : `fails: findings at ${summary.failOn} or above`;
  return `Summary: ${counts}; ${verdict} (exit ${summary.exitCode}).`;
}

export function formatText(report: DoctorReport, width = 100): string {
  const { server, role } = report;
  const tls = server.tls
    ? `TLS ${server.tls.version} ${server.tls.cipher}`
    : server.target.startsWith('/')
      ? 'Unix socket'
      : 'no TLS';
  const who =
    role.proxyUser !== undefined ? `"${role.name}" (for proxy user "${role.proxyUser}")` : `"${role.name}"`;
  const out: string[] = [
    'pg-readonly-proxy doctor',
    `  server:   PostgreSQL ${server.version} at ${server.target} (${tls}, sslmode ${server.sslmode})`,
    `  role:     ${who} in database "${role.database}"`,
    '',
  ];
  for (const severity of [...SEVERITIES].reverse()) {
    const group = report.findings.filter((f) => f.severity === severity);
    if (group.length === 0) continue;
    out.push(`${severity.toUpperCase()} (${group.length})`);
    for (const f of group) {
      out.push(`  [${f.id}] ${f.title}`);
      out.push(wrap(f.detail, width, '      '));
      out.push(wrap(`Advice: ${f.advice}`, width, '      '));
      out.push('');
    }
  }
  if (report.findings.length === 0) out.push('No findings.', '');
  out.push(formatSummary(report.summary));
  return out.join('\n') + '\n';
}
