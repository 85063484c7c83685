/**
 * Worker processes: the process ids of cancel keys name the worker that issued
 * them (encoded, decoded, never out of range), a worker's registry passes a
 * sibling's key on and checks only its own, and the `workers` setting resolves
 * and refuses as documented.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  ConfigError,
  DEFAULT_WORKERS,
  resolveConfig,
  resolveWorkers,
  validateRawConfig,
} from '../../src/config/config.js';
import { MAX_WORKERS } from '../../src/config/schema.js';
import {
  CancelRegistry,
  makeProcessId,
  workerBits,
  workerOfProcessId,
} from '../../src/session/cancel-registry.js';

describe('process ids that name their worker', () => {
  test('bits: none for one process, enough for every index otherwise', () => {
    const cases: Array<[number, number]> = [
      [1, 0],
      [2, 1],
      [3, 2],
      [4, 2],
      [5, 3],
      [8, 3],
      [9, 4],
      [16, 4],
      [17, 5],
      [255, 8],
      [256, 8],
    ];
    for (const [workers, bits] of cases) assert.equal(workerBits(workers), bits, `${workers} workers`);
  });

  test('every worker of every cluster size: ids are positive Int32s that decode to their worker', () => {
    for (const workers of [2, 3, 4, 5, 7, 8, 13, 64, 255, MAX_WORKERS]) {
      for (let worker = 0; worker < workers; worker++) {
        for (let i = 0; i < 50; i++) {
          const id = makeProcessId(worker, workers);
          assert.ok(
            Number.isInteger(id) && id >= 1 && id <= 0x7fffffff,
            `${id} (worker ${worker} of ${workers})`,
          );
          // What a CancelRequest carries: the id as a signed Int32 on the wire.
          const wire = Buffer.alloc(4);
          wire.writeInt32BE(id);
          assert.equal(workerOfProcessId(wire.readInt32BE(0), workers), worker);
        }
      }
    }
  });

  test('the bits below the worker are random', () => {
    const ids = new Set(Array.from({ length: 1000 }, () => makeProcessId(1, 2)));
    assert.ok(ids.size > 990, `${ids.size} distinct of 1000`);
    for (const id of ids) assert.ok(id >= 2 ** 30 && id <= 0x7fffffff);
  });

  test('the edges of each worker range', () => {
    // Two workers: 1 bit. Worker 0 owns 1 .. 2^30 - 1, worker 1 owns 2^30 .. 2^31 - 1.
    assert.equal(workerOfProcessId(1, 2), 0);
    assert.equal(workerOfProcessId(2 ** 30 - 1, 2), 0);
    assert.equal(workerOfProcessId(2 ** 30, 2), 1);
    assert.equal(workerOfProcessId(0x7fffffff, 2), 1);
    // Three workers: 2 bits, and index 3 belongs to nobody.
    assert.equal(workerOfProcessId(2 * 2 ** 29, 3), 2);
    assert.equal(workerOfProcessId(3 * 2 ** 29 - 1, 3), 2);
    assert.equal(workerOfProcessId(3 * 2 ** 29, 3), undefined);
    assert.equal(workerOfProcessId(0x7fffffff, 3), undefined);
  });

  test('what no worker issued decodes to none', () => {
    for (const id of [0, -1, -5, -(2 ** 31), 2 ** 31, 1.5, Number.NaN]) {
      assert.equal(workerOfProcessId(id, 2), undefined, String(id));
      assert.equal(workerOfProcessId(id, 4), undefined, String(id));
    }
  });
});

describe('a worker registry', () => {
  function registry(worker: number, workers: number) {
    const forwarded: Array<{ processId: number; secret: string }> = [];
    const cancels = new CancelRegistry(100, {
      worker,
      workers,
      forward: (processId, secretKey) => forwarded.push({ processId, secret: secretKey.toString('hex') }),
    });
    return { cancels, forwarded };
  }
  const target = () => {
    const t = { cancelled: 0, cancelUpstream: () => void t.cancelled++ };
    return t;
  };

  test('issues keys that name it, and cancels its own after a constant-time check', () => {
    const { cancels, forwarded } = registry(1, 3);
    const t = target();
    const key = cancels.issue(t);
    assert.equal(workerOfProcessId(key.processId, 3), 1);
    const wrong = Buffer.from(key.secretKey.map((b) => b ^ 1));
    assert.equal(cancels.cancel(key.processId, wrong, 1000), 'unknown_key');
    assert.equal(cancels.cancel(key.processId, key.secretKey, 1000), 'forwarded');
    assert.equal(cancels.cancel(key.processId, key.secretKey, 1050), 'rate_limited');
    assert.equal(cancels.cancel(key.processId, key.secretKey, 1200), 'forwarded');
    assert.equal(t.cancelled, 2);
    assert.deepEqual(forwarded, []);
  });

  test("passes a sibling's key on, secret and all, without looking it up", () => {
    const a = registry(0, 2);
    const b = registry(1, 2);
    const t = target();
    const key = b.cancels.issue(t);
    assert.equal(a.cancels.cancel(key.processId, key.secretKey), 'relayed');
    assert.deepEqual(a.forwarded, [{ processId: key.processId, secret: key.secretKey.toString('hex') }]);
    assert.equal(t.cancelled, 0, 'only the owner cancels');
  });

  test('drops a key no worker could have issued', () => {
    const { cancels, forwarded } = registry(0, 3);
    assert.equal(cancels.cancel(3 * 2 ** 29, Buffer.alloc(4)), 'unknown_key');
    assert.equal(cancels.cancel(-7, Buffer.alloc(4)), 'unknown_key');
    assert.equal(cancels.cancel(0, Buffer.alloc(4)), 'unknown_key');
    assert.deepEqual(forwarded, []);
  });

  test('without routing, one process owns every key, as before', () => {
    const cancels = new CancelRegistry();
    const t = target();
    const key = cancels.issue(t);
    assert.ok(key.processId >= 1 && key.processId < 0x7fffffff);
    assert.equal(cancels.cancel(key.processId, key.secretKey), 'forwarded');
    assert.equal(cancels.cancel(key.processId ^ 1, key.secretKey, Date.now() + 1000), 'unknown_key');
  });
});

describe('the workers setting', () => {
  const resolve = (raw: object, overrides: { workers?: string } = {}) =>
    resolveConfig(raw as never, { upstream: 'postgres://db:5432', ...overrides }, {});

  test('one process unless told otherwise', () => {
    assert.equal(DEFAULT_WORKERS, 1);
    assert.equal(resolve({}).workers, DEFAULT_WORKERS);
  });

  test('a count from the file, the flag over the file, auto from the CPUs', () => {
    assert.equal(resolve({ workers: 4 }).workers, 4);
    assert.equal(resolve({ workers: 4 }, { workers: '2' }).workers, 2);
    assert.equal(
      resolveWorkers('auto', 'workers', () => 6),
      6,
    );
    assert.equal(
      resolveWorkers('auto', 'workers', () => 1000),
      MAX_WORKERS,
    );
    assert.equal(
      resolveWorkers('auto', 'workers', () => 0),
      1,
    );
    assert.ok(resolve({ workers: 'auto' }).workers >= 1);
  });

  test('bad counts are refused with the key and the range', () => {
    for (const spec of ['0', '-1', '2.5', 'x', '', '257', '99999']) {
      assert.throws(() => resolveWorkers(spec, '--workers'), {
        name: 'ConfigError',
        message: `--workers: must be a whole number from 1 to ${MAX_WORKERS}, or "auto"`,
      });
    }
    for (const workers of [0, 257, 1.5, 'many', true]) {
      assert.throws(
        () => validateRawConfig({ workers }, 'test.yaml'),
        (err: Error) => {
          assert.ok(err instanceof ConfigError);
          // One line for the key, not one per branch the schema tried.
          assert.equal(
            err.message,
            `invalid configuration in test.yaml:\n  workers: must be a whole number from 1 to ${MAX_WORKERS}, or "auto"`,
          );
          return true;
        },
      );
    }
    assert.doesNotThrow(() => validateRawConfig({ workers: 'auto' }, 'test.yaml'));
    assert.doesNotThrow(() => validateRawConfig({ workers: MAX_WORKERS }, 'test.yaml'));
  });

  test('max_connections_per_user only with one process: refused with several, and with auto', () => {
    const limits = { max_connections_per_user: 3 };
    assert.equal(resolve({ limits }).maxConnectionsPerUser, 3);
    assert.equal(resolve({ limits, workers: 1 }).maxConnectionsPerUser, 3);
    assert.equal(resolve({ limits, workers: 4 }, { workers: '1' }).maxConnectionsPerUser, 3);
    for (const [raw, flag] of [
      [{ limits, workers: 2 }, undefined],
      [{ limits, workers: 'auto' }, undefined],
      [{ limits }, '3'],
      [{ limits }, 'auto'],
    ] as const) {
      assert.throws(() => resolve(raw, flag === undefined ? {} : { workers: flag }), {
        name: 'ConfigError',
        message: /^limits\.max_connections_per_user cannot be enforced with several worker processes/,
      });
    }
  });
});
