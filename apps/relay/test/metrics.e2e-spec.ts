import { describe, expect, it } from '@jest/globals';
import { ChatEvent, SecureChatClient, type IncomingMessage } from '@chat/signal-sdk';
import { createMemoryStores } from '@chat/signal-sdk/testing';
import { useSdkRelay } from './support/sdk-relay.js';
import { DEFAULT_TEST_PASSWORD, uniqueUsername } from './support/test-relay.js';
import { until } from './support/wait.js';

// Issue 7, acceptance 3 (metrics): the Prometheus counters move with real
// traffic. Two SDK clients chat through the relay; /metrics is scraped before
// and after, and every counter moves by exactly the envelopes the chat made.

const fixture = useSdkRelay('metrics');

/** The samples of a Prometheus text exposition: `name{labels}` -> value. */
async function scrape(): Promise<Map<string, number>> {
  const response = await fetch(`${fixture.relay.baseUrl}/metrics`);
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toContain('text/plain');
  const samples = new Map<string, number>();
  for (const line of (await response.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

const ACCEPTED = 'relay_messages_accepted_total{kind="authenticated"}';
const DELIVERED = 'relay_messages_delivered_total';
const ACKED = 'relay_messages_acked_total';
const LATENCY_COUNT = 'relay_delivery_latency_seconds_count';
const QUEUE = 'relay_message_queue_depth';
const SOCKETS = 'relay_websocket_connections';

function newClient(): { client: SecureChatClient; seen: IncomingMessage[] } {
  // No delivery receipts: they are messages too, and would move the counters by more than the chat's.
  const client = SecureChatClient.create({ relayUrl: fixture.relay.baseUrl, stores: createMemoryStores(), deliveryReceipts: false });
  fixture.clients.push(client);
  const seen: IncomingMessage[] = [];
  client.on(ChatEvent.Message, (message) => void seen.push(message));
  return { client, seen };
}

describe('/metrics', () => {
  it('counts accepted, delivered and acked messages, the delivery latency, open sockets and the queue', async () => {
    const alice = newClient();
    const bob = newClient();
    await alice.client.register(uniqueUsername('alice'), DEFAULT_TEST_PASSWORD);
    await bob.client.register(uniqueUsername('bob'), DEFAULT_TEST_PASSWORD);
    await alice.client.connect();

    // Bob is offline: what Alice sends waits in the queue.
    const before = await scrape();
    for (const text of ['one', 'two', 'three']) await alice.client.send(bob.client.username!, text);
    const queued = await scrape();
    expect(queued.get(ACCEPTED)! - (before.get(ACCEPTED) ?? 0)).toBe(3);
    expect(queued.get(QUEUE)).toBe(3);
    expect(queued.get(DELIVERED)).toBe(before.get(DELIVERED));
    expect(queued.get(SOCKETS)).toBe(1);

    // Bob connects: the queue is delivered, acked and empty; two sockets are open.
    await bob.client.connect();
    await until(() => bob.seen.length === 3, 'bob to have the queued messages');
    let after = await scrape();
    await until(async () => {
      after = await scrape();
      return after.get(ACKED)! - (before.get(ACKED) ?? 0) === 3;
    }, 'the acks to be counted');
    expect(after.get(DELIVERED)! - before.get(DELIVERED)!).toBe(3);
    expect(after.get(LATENCY_COUNT)! - before.get(LATENCY_COUNT)!).toBe(3);
    expect(after.get(QUEUE)).toBe(0);
    expect(after.get(SOCKETS)).toBe(2);

    // Live traffic both ways moves every counter once per message.
    await bob.client.send(alice.client.username!, 'hello back');
    await alice.client.send(bob.client.username!, 'four');
    await until(() => alice.seen.length === 1 && bob.seen.length === 4, 'the live messages to arrive');
    let live = await scrape();
    await until(async () => {
      live = await scrape();
      return live.get(ACKED)! - before.get(ACKED)! === 5;
    }, 'the live acks to be counted');
    expect(live.get(ACCEPTED)! - (before.get(ACCEPTED) ?? 0)).toBe(5);
    expect(live.get(DELIVERED)! - before.get(DELIVERED)!).toBe(5);
    expect(live.get(LATENCY_COUNT)! - before.get(LATENCY_COUNT)!).toBe(5);
    expect(live.get(QUEUE)).toBe(0);

    // Default process metrics are there too.
    expect(live.has('process_cpu_user_seconds_total')).toBe(true);
  });
});
