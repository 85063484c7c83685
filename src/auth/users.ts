/**
 * Proxy-managed users: who may log in to the proxy (by a SCRAM verifier, never a
 * plaintext password), as which upstream role, with which upstream password,
 * and into which databases. Built from the config and an optional users file;
 * rebuilt as a whole on reload, so a bad file leaves the old users in place.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import {
  ConfigError,
  readYamlFile,
  resolveUser,
  type AuthConfig,
  type ProxyUserConfig,
  type RawUser,
} from '../config/config.js';
import { usersFileSchema } from '../config/schema.js';
import { isMd5Verifier } from './md5.js';
import { parseScramVerifier, type ScramVerifier } from './scram.js';

export type StoredVerifier = { kind: 'scram'; scram: ScramVerifier } | { kind: 'md5'; md5: string };

export interface ProxyUser {
  name: string;
  verifier: StoredVerifier;
  upstreamUser: string;
  /** Undefined: none configured (an upstream that trusts the proxy, or a client certificate). */
  upstreamPassword: string | undefined;
  /** Databases the user may open; undefined: any. */
  databases: Set<string> | undefined;
}

const validateUsersFile = new Ajv({ allErrors: true, strict: true }).compile(usersFileSchema);

export class UserDirectory {
  private users: Map<string, ProxyUser>;
  /**
   * Seeds the fake salts of the mock exchange run for unknown users. Derived from
   * the verifiers at start (secret, and the same across restarts with the same
   * users) and kept on reload, so an unknown name's salt is as stable as a real
   * user's.
   */
  readonly mockSecret: Buffer;
  /** The iteration count most real users have, shown by the mock exchange. */
  mockIterations = 4096;

  constructor(
    private readonly auth: AuthConfig,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    this.users = this.build();
    this.mockSecret = this.deriveMockSecret();
    this.mockIterations = this.commonIterations();
  }

  get allowMd5(): boolean {
    return this.auth.allowMd5;
  }

  get size(): number {
    return this.users.size;
  }

  get(name: string): ProxyUser | undefined {
    return this.users.get(name);
  }

  /** Reads the users file and upstream passwords again; throws (keeping the old users) on any error. */
  reload(): void {
    this.users = this.build();
    this.mockIterations = this.commonIterations();
  }

  private scramVerifiers(): ScramVerifier[] {
    return [...this.users.values()].flatMap((u) => (u.verifier.kind === 'scram' ? [u.verifier.scram] : []));
  }

  private deriveMockSecret(): Buffer {
    const verifiers = this.scramVerifiers();
    // With no SCRAM user at all there is nothing secret to derive from.
    if (verifiers.length === 0) return randomBytes(32);
    const h = createHash('sha256').update('pg-readonly-proxy mock exchange\0');
    for (const v of verifiers) h.update(v.salt).update(v.storedKey).update(v.serverKey);
    return h.digest();
  }

  private commonIterations(): number {
    const counts = new Map<number, number>();
    for (const v of this.scramVerifiers()) counts.set(v.iterations, (counts.get(v.iterations) ?? 0) + 1);
    return [...counts].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0]?.[0] ?? 4096;
  }

  private build(): Map<string, ProxyUser> {
    const all = new Map<string, ProxyUserConfig>(Object.entries(this.auth.users));
    if (this.auth.usersFile) {
      for (const [name, u] of Object.entries(readUsersFile(this.auth.usersFile))) {
        if (all.has(name)) {
          throw new ConfigError(`user "${name}" is defined both in the config and in ${this.auth.usersFile}`);
        }
        all.set(name, resolveUser(u));
      }
    }
    const users = new Map<string, ProxyUser>();
    for (const [name, u] of all) users.set(name, this.toUser(name, u));
    return users;
  }

  private toUser(name: string, u: ProxyUserConfig): ProxyUser {
    const where = `auth user "${name}"`;
    let verifier: StoredVerifier;
    const scram = parseScramVerifier(u.password);
    if (scram) {
      verifier = { kind: 'scram', scram };
    } else if (isMd5Verifier(u.password)) {
      if (!this.auth.allowMd5) {
        throw new ConfigError(
          `${where}: MD5 verifiers are refused unless auth.allow_md5 is true; prefer a SCRAM verifier (pg-readonly-proxy hash-password)`,
        );
      }
      verifier = { kind: 'md5', md5: u.password };
    } else {
      throw new ConfigError(
        `${where}: password must be a SCRAM-SHA-256 verifier, not a plaintext password; make one with: pg-readonly-proxy hash-password`,
      );
    }
    if (u.upstreamPasswordEnv && u.upstreamPasswordFile) {
      throw new ConfigError(`${where}: give upstream_password_env or upstream_password_file, not both`);
    }
    let upstreamPassword: string | undefined;
    if (u.upstreamPasswordEnv) {
      upstreamPassword = this.env[u.upstreamPasswordEnv];
      if (upstreamPassword === undefined) {
        throw new ConfigError(`${where}: environment variable ${u.upstreamPasswordEnv} is not set`);
      }
    } else if (u.upstreamPasswordFile) {
      try {
        // A trailing newline (as `echo` writes) is not part of the password.
        upstreamPassword = readFileSync(u.upstreamPasswordFile, 'utf8').replace(/\r?\n$/, '');
      } catch (err) {
        throw new ConfigError(`${where}: upstream_password_file: ${(err as Error).message}`);
      }
    }
    return {
      name,
      verifier,
      upstreamUser: u.upstreamUser,
      upstreamPassword,
      databases: u.databases.includes('*') ? undefined : new Set(u.databases),
    };
  }
}

function readUsersFile(file: string): Record<string, RawUser> {
  const raw = readYamlFile(file, 'users file');
  if (raw === null || raw === undefined) return {};
  if (!validateUsersFile(raw)) {
    const first = validateUsersFile.errors?.[0];
    throw new ConfigError(
      `invalid users file ${file}: ${first?.instancePath || '(top level)'} ${first?.message ?? ''}`.trim(),
    );
  }
  return (raw as { users?: Record<string, RawUser> }).users ?? {};
}
