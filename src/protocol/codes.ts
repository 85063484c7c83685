/**
 * Message type bytes, split by direction: the same letter means different things
 * each way ('D' is Describe from a client and DataRow from a server).
 */
export const FrontendCode = {
  Bind: 0x42, // B
  Close: 0x43, // C
  Describe: 0x44, // D
  Execute: 0x45, // E
  FunctionCall: 0x46, // F
  Flush: 0x48, // H
  Parse: 0x50, // P
  Query: 0x51, // Q
  Sync: 0x53, // S
  Terminate: 0x58, // X
  CopyFail: 0x66, // f
  CopyDone: 0x63, // c
  CopyData: 0x64, // d
  /** PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse: all 'p'. */
  AuthResponse: 0x70, // p
} as const;
export type FrontendCode = (typeof FrontendCode)[keyof typeof FrontendCode];

export const BackendCode = {
  Authentication: 0x52, // R
  BackendKeyData: 0x4b, // K
  BindComplete: 0x32, // 2
  CloseComplete: 0x33, // 3
  CommandComplete: 0x43, // C
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyInResponse: 0x47, // G
  CopyOutResponse: 0x48, // H
  CopyBothResponse: 0x57, // W
  DataRow: 0x44, // D
  EmptyQueryResponse: 0x49, // I
  ErrorResponse: 0x45, // E
  FunctionCallResponse: 0x56, // V
  NegotiateProtocolVersion: 0x76, // v
  NoData: 0x6e, // n
  NoticeResponse: 0x4e, // N
  NotificationResponse: 0x41, // A
  ParameterDescription: 0x74, // t
  ParameterStatus: 0x53, // S
  ParseComplete: 0x31, // 1
  PortalSuspended: 0x73, // s
  ReadyForQuery: 0x5a, // Z
  RowDescription: 0x54, // T
} as const;
export type BackendCode = (typeof BackendCode)[keyof typeof BackendCode];

/** Request codes of the untyped first packet. */
export const StartupCode = {
  Protocol3: 196608, // 3.0
  CancelRequest: 80877102,
  SSLRequest: 80877103,
  GSSENCRequest: 80877104,
} as const;

/** Authentication request subtypes ('R' message, first Int32). */
export const AuthCode = {
  Ok: 0,
  KerberosV5: 2,
  CleartextPassword: 3,
  MD5Password: 5,
  GSS: 7,
  GSSContinue: 8,
  SSPI: 9,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;

/** Transaction status byte of ReadyForQuery. */
export const TxStatus = {
  Idle: 0x49, // I
  InBlock: 0x54, // T
  Failed: 0x45, // E
} as const;
export type TxStatus = (typeof TxStatus)[keyof typeof TxStatus];
