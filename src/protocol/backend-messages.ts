/**
 * Pure encode/decode of the backend (server → client) messages the proxy builds
 * or must read. Every decoder takes a whole message including its type byte and
 * length, possibly a slice of a larger buffer.
 */
import { BackendCode, TxStatus } from './codes.js';
import { MessageReader } from './reader.js';
import { MessageWriter } from './writer.js';

/** ErrorResponse / NoticeResponse field codes. */
export const ErrorField = {
  Severity: 0x53, // S (localized)
  SeverityNonLocalized: 0x56, // V
  Code: 0x43, // C
  Message: 0x4d, // M
  Detail: 0x44, // D
  Hint: 0x48, // H
  Position: 0x50, // P
  Where: 0x57, // W
  File: 0x46, // F
  Line: 0x4c, // L
  Routine: 0x52, // R
} as const;

export interface ErrorFields {
  severity: 'ERROR' | 'FATAL' | 'PANIC' | 'WARNING' | 'NOTICE' | 'DEBUG' | 'INFO' | 'LOG';
  code: string;
  message: string;
  detail?: string | undefined;
  hint?: string | undefined;
  position?: number | undefined;
  routine?: string | undefined;
}

export function encodeErrorResponse(e: ErrorFields, code: number = BackendCode.ErrorResponse): Buffer {
  const w = new MessageWriter(code, 128 + e.message.length);
  w.int8(ErrorField.Severity).cstring(e.severity);
  w.int8(ErrorField.SeverityNonLocalized).cstring(e.severity);
  w.int8(ErrorField.Code).cstring(e.code);
  w.int8(ErrorField.Message).cstring(e.message);
  if (e.detail) w.int8(ErrorField.Detail).cstring(e.detail);
  if (e.hint) w.int8(ErrorField.Hint).cstring(e.hint);
  if (e.position !== undefined) w.int8(ErrorField.Position).cstring(String(e.position));
  if (e.routine) w.int8(ErrorField.Routine).cstring(e.routine);
  return w.int8(0).finish();
}

/** Every field of an ErrorResponse or NoticeResponse, keyed by its one-letter code. */
export function decodeErrorFields(msg: Buffer): Map<string, string> {
  const r = new MessageReader(msg, 5, 1 + msg.readInt32BE(1));
  const fields = new Map<string, string>();
  for (;;) {
    const code = r.int8();
    if (code === 0) break;
    fields.set(String.fromCharCode(code), r.cstring());
  }
  return fields;
}

export function encodeReadyForQuery(status: TxStatus): Buffer {
  return new MessageWriter(BackendCode.ReadyForQuery, 6).int8(status).finish();
}

export function decodeReadyForQuery(msg: Buffer): TxStatus {
  return msg[5] as TxStatus;
}

export function decodeParameterStatus(msg: Buffer): { name: string; value: string } {
  const r = new MessageReader(msg, 5, 1 + msg.readInt32BE(1));
  const name = r.cstring();
  const value = r.cstring();
  return { name, value };
}

export function encodeParameterStatus(name: string, value: string): Buffer {
  return new MessageWriter(BackendCode.ParameterStatus).cstring(name).cstring(value).finish();
}

export interface BackendKey {
  processId: number;
  /** 4 bytes in protocol 3.0; up to 256 in 3.2. */
  secretKey: Buffer;
}

export function decodeBackendKeyData(msg: Buffer): BackendKey {
  const end = 1 + msg.readInt32BE(1);
  const r = new MessageReader(msg, 5, end);
  const processId = r.int32();
  const secretKey = Buffer.from(r.bytes(r.remaining));
  return { processId, secretKey };
}

export function encodeBackendKeyData(key: BackendKey): Buffer {
  return new MessageWriter(BackendCode.BackendKeyData, 16).int32(key.processId).bytes(key.secretKey).finish();
}

/** The subtype of an Authentication ('R') message. */
export function decodeAuthenticationCode(msg: Buffer): number {
  return msg.readInt32BE(5);
}

export function encodeAuthenticationOk(): Buffer {
  return new MessageWriter(BackendCode.Authentication, 9).int32(0).finish();
}

/**
 * NegotiateProtocolVersion: the newest protocol version the server speaks for
 * the client's major version, as a full version code (major << 16 | minor, as
 * PostgreSQL sends it: 196608 for 3.0), and the protocol options it did not know.
 */
export function encodeNegotiateProtocolVersion(version: number, unrecognized: string[]): Buffer {
  const w = new MessageWriter(BackendCode.NegotiateProtocolVersion).int32(version).int32(unrecognized.length);
  for (const name of unrecognized) w.cstring(name);
  return w.finish();
}

/** An Authentication ('R') request: its subtype and the bytes after it. */
export function decodeAuthentication(msg: Buffer): { code: number; data: Buffer } {
  const end = 1 + msg.readInt32BE(1);
  return { code: msg.readInt32BE(5), data: msg.subarray(9, end) };
}

/** An Authentication request of any subtype, with its payload (salt, SASL data). */
export function encodeAuthentication(code: number, data?: Buffer): Buffer {
  const w = new MessageWriter(BackendCode.Authentication, 9 + (data?.length ?? 0)).int32(code);
  if (data) w.bytes(data);
  return w.finish();
}

/** AuthenticationSASL's mechanism list: NUL-terminated names, then an empty one. */
export function encodeSaslMechanisms(mechanisms: string[]): Buffer {
  return Buffer.from(mechanisms.map((m) => `${m}\0`).join('') + '\0');
}

export function decodeSaslMechanisms(data: Buffer): string[] {
  const names = data.toString('utf8').split('\0');
  // A well-formed list ends in two NULs: the last two pieces are empty.
  return names.filter((n) => n !== '');
}
