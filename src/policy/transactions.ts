/**
 * Transaction modes: BEGIN / START TRANSACTION / SET TRANSACTION /
 * SET SESSION CHARACTERISTICS carry a list of DefElem options. Any
 * transaction_read_only option with a false value makes the transaction (or the
 * session default) read-write; PostgreSQL applies the last of repeated options,
 * so one read-write option anywhere is enough to refuse.
 */
import { finding, type Finding } from './messages.js';
import { asArray, constantOf, unwrap } from './nodes.js';
import { parseBool } from './settings.js';
import { ReasonCode } from './types.js';

/** A read-write option in the list, if any: `what` names the statement ("BEGIN", "SET TRANSACTION"). */
export function checkTransactionModes(options: unknown, what: string): Finding | undefined {
  for (const item of asArray(options)) {
    const opt = unwrap(item);
    if (opt?.tag !== 'DefElem' || opt.body.defname !== 'transaction_read_only') continue;
    const c = constantOf(opt.body.arg);
    let readOnly: boolean | undefined;
    if (c?.type === 'number') readOnly = c.value !== 0;
    else if (c?.type === 'boolean') readOnly = c.value;
    else if (c?.type === 'string') readOnly = parseBool(c.value);
    if (readOnly === true) continue;
    const loc = opt.body.location;
    return finding(ReasonCode.ReadWriteTransaction, `${what} READ WRITE`, 'this connection is read-only', {
      hint: `Use ${what} READ ONLY, or leave out READ WRITE.`,
      ...(typeof loc === 'number' && loc >= 0 ? { offset: loc } : {}),
    });
  }
  return undefined;
}
