import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from '@jest/globals';
import { Redis } from 'ioredis';
import { CloseCode } from '@chat/protocol';
import { deviceTopic, accountTopic, type BusEvent } from './delivery-bus.js';
import { RedisDeliveryBus } from './redis-delivery-bus.js';

// Against the real Redis of REDIS_URL (CI's Postgres+Redis run); the embedded run has none.
const REDIS_URL = process.env.REDIS_URL;
const describeWithRedis = REDIS_URL ? describe : describe.skip;

/** Resolves once `condition` holds; throws after `timeoutMs`. */
async function until(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describeWithRedis(`RedisDeliveryBus (needs REDIS_URL${REDIS_URL ? '' : ': not set, skipped'})`, () => {
  const open: RedisDeliveryBus[] = [];
  const admin: Redis[] = [];

  afterEach(async () => {
    for (const bus of open.splice(0)) await bus.close();
    for (const client of admin.splice(0)) client.disconnect();
  });

  /** Two instances of one cluster, on a prefix of their own so that concurrent specs do not cross. */
  function cluster(): { a: RedisDeliveryBus; b: RedisDeliveryBus; atA: BusEvent[]; atB: BusEvent[]; prefix: string } {
    const prefix = `test-bus-${randomBytes(4).toString('hex')}:`;
    const a = new RedisDeliveryBus(REDIS_URL as string, { prefix });
    const b = new RedisDeliveryBus(REDIS_URL as string, { prefix });
    open.push(a, b);
    const atA: BusEvent[] = [];
    const atB: BusEvent[] = [];
    a.onEvent((event) => atA.push(event));
    b.onEvent((event) => atB.push(event));
    return { a, b, atA, atB, prefix };
  }

  it('carries an event to the instance subscribed to its topic, and to the publisher once (not echoed back)', async () => {
    const { a, b, atA, atB } = cluster();
    await b.subscribe([deviceTopic('row-1')]);
    await a.subscribe([deviceTopic('row-1')]);
    const wake: BusEvent = { type: 'wake', deviceRowId: 'row-1' };
    await a.publish(wake);
    expect(atA).toEqual([wake]); // handled locally, synchronously
    await until(() => atB.length === 1, 'the event at B');
    expect(atB).toEqual([wake]);
    // A later event arriving proves the echo of the first was dropped rather than still on its way.
    const acked: BusEvent = { type: 'acked', deviceRowId: 'row-1', id: 'm-1' };
    await b.publish(acked);
    await until(() => atA.length === 2, 'the second event at A');
    expect(atA).toEqual([wake, acked]);
    expect(atB).toEqual([wake, acked]);
  });

  it('does not carry events of topics the instance is not subscribed to, or no longer is', async () => {
    const { a, b, atB } = cluster();
    await b.subscribe([deviceTopic('row-1'), accountTopic('acc-1')]);
    await b.subscribe([deviceTopic('row-1')]); // a second connection of the device on B
    await a.publish({ type: 'wake', deviceRowId: 'row-other' });
    await b.unsubscribe([deviceTopic('row-1')]); // one of the two is gone: still subscribed
    await a.publish({ type: 'wake', deviceRowId: 'row-1' });
    const close: BusEvent = { type: 'close-account', accountId: 'acc-1', code: CloseCode.CredentialsChanged, reason: 'CREDENTIALS_CHANGED' };
    await a.publish(close);
    await until(() => atB.length === 2, 'two events at B');
    expect(atB).toEqual([{ type: 'wake', deviceRowId: 'row-1' }, close]);

    await b.unsubscribe([deviceTopic('row-1'), accountTopic('acc-1')]);
    expect(b.subscribedTopics).toEqual([]);
    await a.publish({ type: 'wake', deviceRowId: 'row-1' });
    // Fence: an event on a topic B still holds arrives after anything published before it.
    await b.subscribe([deviceTopic('fence')]);
    await a.publish({ type: 'wake', deviceRowId: 'fence' });
    await until(() => atB.length === 3, 'the fence event at B');
    expect(atB.at(-1)).toEqual({ type: 'wake', deviceRowId: 'fence' });
  });

  it('orders connection generations across instances', async () => {
    const { a, b } = cluster();
    const first = await a.nextGeneration();
    const second = await b.nextGeneration();
    const third = await a.nextGeneration();
    expect(second).toBeGreaterThan(first);
    expect(third).toBeGreaterThan(second);
    await expect(a.ping()).resolves.toBeUndefined();
  });

  it('resubscribes after its subscriber connection is cut and asks for a resync', async () => {
    const { a, b, atB } = cluster();
    let resyncs = 0;
    b.onResync(() => resyncs++);
    await b.subscribe([deviceTopic('row-1')]);
    const control = new Redis(REDIS_URL as string);
    admin.push(control);
    const clients = (await control.client('LIST')) as string;
    const line = clients.split('\n').find((entry) => entry.includes(`name=relay-bus-subscriber-${b.instanceId}`));
    const id = /\bid=(\d+)/.exec(line ?? '')?.[1];
    expect(id).toBeDefined();
    await control.client('KILL', 'ID', id as string);
    await until(() => resyncs === 1, 'the resync after the reconnect');
    await a.publish({ type: 'wake', deviceRowId: 'row-1' });
    await until(() => atB.length === 1, 'an event after the reconnect');
  });
});
