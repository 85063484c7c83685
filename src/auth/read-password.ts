/**
 * Reading a password for `hash-password`: asked twice without echo on a
 * terminal, otherwise the whole of stdin (one trailing newline dropped), so
 * it never has to appear on a command line or in shell history.
 */
import { readFileSync } from 'node:fs';
import { ConfigError } from '../config/config.js';

export async function readPassword(): Promise<string> {
  if (!process.stdin.isTTY) return readFileSync(0, 'utf8').replace(/\r?\n$/, '');
  const first = await ask('Password: ');
  const second = await ask('Again: ');
  if (first !== second) throw new ConfigError('the passwords do not match');
  return first;
}

function ask(prompt: string): Promise<string> {
  const stdin = process.stdin;
  process.stderr.write(prompt);
  stdin.setRawMode(true);
  stdin.resume();
  return new Promise((resolve, reject) => {
    let typed = '';
    const done = (err?: Error): void => {
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(typed);
    };
    const onData = (chunk: Buffer): void => {
      for (const ch of chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return done();
        if (ch === '\u0003') return done(new ConfigError('interrupted'));
        if (ch === '\u0004') return done(); // Ctrl-D: end of input
        if (ch === '\u007f' || ch === '\b') typed = [...typed].slice(0, -1).join('');
        else if (ch >= ' ' || ch === '\t') typed += ch; // other control keys are not part of a password
      }
    };
    const onEnd = (): void => done();
    stdin.on('data', onData);
    stdin.once('end', onEnd);
  });
}
