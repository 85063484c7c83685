/**
 * Severities of the doctor's findings, their order, and the exit code a set of
 * findings earns: pure, no I/O.
 */
import { ConfigError } from '../config/config.js';

export const SEVERITIES = ['info', 'low', 'medium', 'high', 'critical'] as const;
export type Severity = (typeof SEVERITIES)[number];

/** What `--fail-on` is when not given: high and critical findings fail the run. */
export const DEFAULT_FAIL_ON: Severity = 'high';

export interface Finding {
  /** Stable identifier, for scripts and for silencing in CI (e.g. `role-superuser`). */
  id: string;
  severity: Severity;
  /** One line: what was found. */
  title: string;
  /** Why it matters and what exactly was seen. */
  detail: string;
  /** What to do about it, SQL included where there is one fix. */
  advice: string;
  /** The objects concerned, when there are any (names as PostgreSQL quotes them). */
  objects?: string[];
}

export function severityRank(s: Severity): number {
  return SEVERITIES.indexOf(s);
}

export function isSeverity(s: string): s is Severity {
  return (SEVERITIES as readonly string[]).includes(s);
}

/** The value of `--fail-on`, case-insensitive; a ConfigError names the choices. */
export function parseSeverity(s: string, what = '--fail-on'): Severity {
  const v = s.trim().toLowerCase();
  if (!isSeverity(v)) throw new ConfigError(`${what}: must be one of ${SEVERITIES.join(', ')}, got "${s}"`);
  return v;
}

/** Most severe first; ties by id, so output is stable. */
export function sortFindings(findings: readonly Finding[]): Finding[] {
  return [...findings].sort(
    (a, b) => severityRank(b.severity) - severityRank(a.severity) || a.id.localeCompare(b.id),
  );
}

export interface Summary {
  counts: Record<Severity, number>;
  /** The most severe finding's severity; null with no findings. */
  highest: Severity | null;
  failOn: Severity;
  /** 0: nothing at or above failOn; 1: something is. (2, could not connect, never comes from findings.) */
  exitCode: 0 | 1;
}

export function summarize(findings: readonly Finding[], failOn: Severity): Summary {
  const counts = Object.fromEntries(SEVERITIES.map((s) => [s, 0])) as Record<Severity, number>;
  let highest: Severity | null = null;
  for (const f of findings) {
    counts[f.severity]++;
    if (highest === null || severityRank(f.severity) > severityRank(highest)) highest = f.severity;
  }
  return { counts, highest, failOn, exitCode: exitCodeFor(findings, failOn) };
}

export function exitCodeFor(findings: readonly Finding[], failOn: Severity): 0 | 1 {
  return findings.some((f) => severityRank(f.severity) >= severityRank(failOn)) ? 1 : 0;
}
