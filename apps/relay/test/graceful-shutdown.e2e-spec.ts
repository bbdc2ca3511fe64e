import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ChatEvent, SecureChatClient, type IncomingMessage } from '@chat/signal-sdk';
import { createMemoryStores } from '@chat/signal-sdk/testing';
import { startRelayProcess, type RelayProcess } from './support/relay-process.js';
import { DEFAULT_TEST_PASSWORD, registerUser, uniqueUsername } from './support/test-relay.js';
import { until } from './support/wait.js';
import { connectWs, waitForClose } from './support/ws-client.js';

// Issue 7, acceptance 3 (SIGTERM): a relay process with connected SDK clients
// and messages in flight gets SIGTERM. It exits 0; its sockets are closed
// with 1001 SHUTTING_DOWN (a plain ws client watches for it); the clients
// reconnect to the restarted relay on the same database, and every message
// the sender's app sent arrives exactly once, in order.

const MESSAGES = 30;

describe('graceful shutdown on SIGTERM', () => {
  let relay: RelayProcess;
  const clients: SecureChatClient[] = [];

  beforeAll(async () => {
    relay = await startRelayProcess();
    await relay.start();
  });

  afterAll(async () => {
    for (const client of clients) await client.close();
    await relay?.close();
  });

  function newClient(): { client: SecureChatClient; seen: IncomingMessage[] } {
    const client = SecureChatClient.create({ relayUrl: relay.baseUrl, stores: createMemoryStores(), deliveryReceipts: false });
    clients.push(client);
    const seen: IncomingMessage[] = [];
    client.on(ChatEvent.Message, (message) => void seen.push(message));
    return { client, seen };
  }

  it('drains, closes sockets with 1001, exits 0, and loses or repeats nothing across the restart', async () => {
    const alice = newClient();
    const bob = newClient();
    await alice.client.register(uniqueUsername('alice'), DEFAULT_TEST_PASSWORD);
    await bob.client.register(uniqueUsername('bob'), DEFAULT_TEST_PASSWORD);
    await Promise.all([alice.client.connect(), bob.client.connect()]);
    const watcher = await registerUser(relay, uniqueUsername('watcher'));
    const watching = await connectWs(`ws://127.0.0.1:${relay.port}/v1/ws`, watcher.accessToken);
    const watcherClosed = waitForClose(watching.socket, 60_000);

    const texts = Array.from({ length: MESSAGES }, (_, index) => `message ${index}`);
    // Not awaited one by one: the SDK's outbox sends them in order while the relay goes down and comes back.
    const sends = texts.map((text) => alice.client.send(bob.client.username!, text));
    await until(() => bob.seen.length >= 3, 'the first messages to arrive');

    let accepted = 0;
    for (const send of sends) void send.then(() => accepted++);
    const stopping = relay.terminate();
    // The messages were in flight: the sender's app had not had all of them accepted when the signal went.
    expect(accepted).toBeLessThan(MESSAGES);
    expect(await stopping).toBe(0);
    expect(await watcherClosed).toEqual({ code: 1001, reason: 'SHUTTING_DOWN' });

    await relay.start();
    await Promise.all(sends);
    // A marker sent after the rest: per-sender order puts any stored duplicate before it.
    await alice.client.send(bob.client.username!, 'last');
    await until(() => bob.seen.some((message) => message.text === 'last'), 'every message to arrive after the restart', 60_000);
    expect(bob.seen.map((message) => message.text)).toEqual([...texts, 'last']);
  });
});
