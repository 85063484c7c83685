/**
 * Pure encode/decode of frontend (client → server) messages. Decoders are strict
 * the way PostgreSQL is: a string must end in its NUL and a message must have no
 * bytes left over, so trailing bytes cannot hide a second statement.
 */
import { serialize } from 'pg-protocol';
import { FrontendCode, StartupCode } from './codes.js';
import { MalformedMessage, MessageReader } from './reader.js';
import { MessageWriter } from './writer.js';

export type StartupPacket =
  | { type: 'startup'; major: number; minor: number; params: Map<string, string> }
  | { type: 'ssl' }
  | { type: 'gssenc' }
  | { type: 'cancel'; processId: number; secretKey: Buffer }
  | { type: 'unknown'; code: number };

/** Decodes the untyped first packet (length included). */
export function decodeStartupPacket(msg: Buffer): StartupPacket {
  const len = msg.readInt32BE(0);
  const r = new MessageReader(msg, 4, len);
  const code = r.int32();
  switch (code) {
    case StartupCode.SSLRequest:
      r.expectEnd();
      return { type: 'ssl' };
    case StartupCode.GSSENCRequest:
      r.expectEnd();
      return { type: 'gssenc' };
    case StartupCode.CancelRequest: {
      const processId = r.int32();
      const secretKey = Buffer.from(r.bytes(r.remaining));
      if (secretKey.length < 4 || secretKey.length > 256)
        throw new MalformedMessage('invalid length of cancel request');
      return { type: 'cancel', processId, secretKey };
    }
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== 3) return { type: 'unknown', code };
  const params = new Map<string, string>();
  for (;;) {
    const key = r.cstring();
    if (key === '') break;
    const value = r.cstring();
    if (params.has(key)) throw new MalformedMessage(`startup parameter "${key}" given twice`);
    params.set(key, value);
  }
  r.expectEnd();
  return { type: 'startup', major, minor, params };
}

/** A protocol 3.0 StartupMessage with the parameters in the order given. */
export function encodeStartupMessage(params: Iterable<[string, string]>): Buffer {
  const w = new MessageWriter(null).int32(StartupCode.Protocol3);
  for (const [k, v] of params) w.cstring(k).cstring(v);
  return w.int8(0).finish();
}

export function encodeCancelRequest(processId: number, secretKey: Buffer): Buffer {
  return new MessageWriter(null, 16)
    .int32(StartupCode.CancelRequest)
    .int32(processId)
    .bytes(secretKey)
    .finish();
}

export const encodeSslRequest = (): Buffer =>
  new MessageWriter(null, 8).int32(StartupCode.SSLRequest).finish();

/** The body of a 'p' message (PasswordMessage, SASLResponse): its bytes after the header. */
export function decodeAuthResponse(msg: Buffer): Buffer {
  return msg.subarray(5, 1 + msg.readInt32BE(1));
}

/** A PasswordMessage's password (NUL-terminated, nothing after). */
export function decodePasswordMessage(msg: Buffer): string {
  const r = new MessageReader(msg, 5, 1 + msg.readInt32BE(1));
  const password = r.cstring();
  r.expectEnd();
  return password;
}

/** SASLInitialResponse: the chosen mechanism and its first message (-1 length: none). */
export function decodeSaslInitialResponse(msg: Buffer): { mechanism: string; data: Buffer } {
  const r = new MessageReader(msg, 5, 1 + msg.readInt32BE(1));
  const mechanism = r.cstring();
  const n = r.int32();
  if (n < -1 || n > r.remaining) throw new MalformedMessage('invalid SASL initial response length');
  const data = n <= 0 ? Buffer.alloc(0) : Buffer.from(r.bytes(n));
  r.expectEnd();
  return { mechanism, data };
}

export function encodeSaslInitialResponse(mechanism: string, data: Buffer): Buffer {
  return new MessageWriter(FrontendCode.AuthResponse)
    .cstring(mechanism)
    .int32(data.length)
    .bytes(data)
    .finish();
}

/** SASLResponse and PasswordMessage share a type byte; these carry raw bytes. */
export function encodeAuthResponse(data: Buffer): Buffer {
  return new MessageWriter(FrontendCode.AuthResponse, 5 + data.length).bytes(data).finish();
}

export function encodePasswordMessage(password: string): Buffer {
  return new MessageWriter(FrontendCode.AuthResponse).cstring(password).finish();
}

/** The query text of a Query message, as raw bytes. */
export function decodeQuery(msg: Buffer): Buffer {
  const r = new MessageReader(msg, 5, 1 + msg.readInt32BE(1));
  const text = r.cstringBytes();
  r.expectEnd();
  return text;
}

export interface ParseMessage {
  name: string;
  query: Buffer;
  paramTypes: number[];
}

export function decodeParse(msg: Buffer): ParseMessage {
  const r = new MessageReader(msg, 5, 1 + msg.readInt32BE(1));
  const name = r.cstring();
  const query = r.cstringBytes();
  const n = r.int16();
  if (n < 0) throw new MalformedMessage();
  const paramTypes: number[] = [];
  for (let i = 0; i < n; i++) paramTypes.push(r.int32() >>> 0);
  r.expectEnd();
  return { name, query, paramTypes };
}

/** The portal and statement names a Bind message names (the rest is not read). */
export function decodeBindNames(msg: Buffer): { portal: string; statement: string } {
  const r = new MessageReader(msg, 5, 1 + msg.readInt32BE(1));
  const portal = r.cstring();
  const statement = r.cstring();
  return { portal, statement };
}

export function decodeExecute(msg: Buffer): { portal: string; maxRows: number } {
  const r = new MessageReader(msg, 5, 1 + msg.readInt32BE(1));
  const portal = r.cstring();
  const maxRows = r.int32();
  r.expectEnd();
  return { portal, maxRows };
}

export const encodeExecute = (portal: string, rows: number): Buffer =>
  Buffer.from(serialize.execute({ portal, rows }));
/** A Bind of the named statement into the unnamed portal, with no parameters. */
export const encodeBind = (statement: string): Buffer =>
  Buffer.from(serialize.bind({ statement, values: [] }));
export const encodeFlush = (): Buffer => Buffer.from(serialize.flush());
export const encodeQuery = (text: string): Buffer => Buffer.from(serialize.query(text));
export const encodeParse = (name: string, text: string): Buffer =>
  Buffer.from(serialize.parse({ name, text, types: [] }));
export const encodeTerminate = (): Buffer => Buffer.from(serialize.end());
