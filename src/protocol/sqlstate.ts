/** SQLSTATEs the proxy itself hands out (see PostgreSQL's errcodes.txt). */
export const SqlState = {
  ConnectionFailure: '08006',
  ProtocolViolation: '08P01',
  FeatureNotSupported: '0A000',
  InvalidAuthorizationSpecification: '28000',
  InvalidPassword: '28P01',
  InsufficientPrivilege: '42501',
  ReadOnlySqlTransaction: '25006',
  TooManyConnections: '53300',
  AdminShutdown: '57P01',
  QueryCanceled: '57014',
  IdleSessionTimeout: '57P05',
  CannotConnectNow: '57P03',
  ProgramLimitExceeded: '54000',
  InternalError: 'XX000',
} as const;
export type SqlState = (typeof SqlState)[keyof typeof SqlState];
