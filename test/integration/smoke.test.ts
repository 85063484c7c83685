import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { direct, startProxy, type RunningProxy } from '../helpers/harness.js';

let proxy: RunningProxy;
before(async () => {
  proxy = await startProxy();
  const d = await direct();
  await d.query('DROP TABLE IF EXISTS smoke_items; CREATE TABLE smoke_items (id int primary key, name text)');
  await d.query("INSERT INTO smoke_items VALUES (1, 'one'), (2, 'two')");
  await d.end();
});
after(async () => proxy.close());

test('node-postgres reads through the proxy and gets 25006 on a write', async () => {
  const c = await proxy.client();
  try {
    const r = await c.query('SELECT id, name FROM smoke_items ORDER BY id');
    assert.deepEqual(r.rows, [
      { id: 1, name: 'one' },
      { id: 2, name: 'two' },
    ]);
    await assert.rejects(c.query("INSERT INTO smoke_items VALUES (3, 'three')"), { code: '25006' });
    const again = await c.query('SELECT count(*)::int AS n FROM smoke_items WHERE id = $1', [1]);
    assert.equal(again.rows[0].n, 1);
  } finally {
    await c.end();
  }
  const d = await direct();
  const n = await d.query('SELECT count(*)::int AS n FROM smoke_items');
  await d.end();
  assert.equal(n.rows[0].n, 2);
});
