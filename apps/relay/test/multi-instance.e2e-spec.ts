import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { ChatEvent, ConnectionState, SecureChatClient, type IncomingMessage } from '@chat/signal-sdk';
import { createMemoryStores } from '@chat/signal-sdk/testing';
import { CloseCode, ServerFrameType, type AuthResponse, type ListMessagesResponse } from '@chat/protocol';
import { startChaosProxy, type ChaosProxy } from './support/chaos-proxy.js';
import { startRelayProcess, type RelayProcess } from './support/relay-process.js';
import { createScratchDatabase, type ScratchDatabase } from './support/scratch-database.js';
import { DEFAULT_TEST_PASSWORD, httpJson, registerUser, uniqueUsername, type RelayEnvOverrides } from './support/test-relay.js';
import { until } from './support/wait.js';
import { connectWs, waitForClose, waitForFrame } from './support/ws-client.js';

// Many instances (issue 7, acceptance 1): two relay processes on one
// Postgres database and one Redis. Clients on different instances chat live,
// a device connecting to the other instance displaces its older connection,
// and when one instance is SIGKILLed its clients reconnect to the other
// (through a proxy retargeted as a load balancer would be) and every
// accepted message arrives exactly once.
//
// Two processes cannot share the embedded PGlite, and without Redis there is
// one instance by design: this needs DATABASE_URL and REDIS_URL. The
// in-process bus is covered in the embedded run by the other e2e specs and
// src/bus/in-process-delivery-bus.spec.ts.

const DATABASE_URL = process.env.DATABASE_URL;
const REDIS_URL = process.env.REDIS_URL;
const runnable = DATABASE_URL !== undefined && REDIS_URL !== undefined;
const describeMany = runnable ? describe : describe.skip;
const title = runnable
  ? 'two relay instances on one Postgres and one Redis'
  : 'two relay instances on one Postgres and one Redis (skipped: needs DATABASE_URL and REDIS_URL)';

interface Payload {
  from: string;
  /** Position among the messages `from` sent to this recipient. */
  n: number;
}

describeMany(title, () => {
  let database: ScratchDatabase;
  let a: RelayProcess;
  let b: RelayProcess;
  /** Clients "on A" connect here; retargeted to B once A is dead. */
  let proxyA: ChaosProxy;
  let proxyB: ChaosProxy;
  let clients: SecureChatClient[] = [];

  beforeAll(async () => {
    database = await createScratchDatabase();
    const overrides = { REDIS_URL } as RelayEnvOverrides;
    a = await startRelayProcess(overrides, { databaseUrl: database.url });
    b = await startRelayProcess(overrides, { databaseUrl: database.url });
    // One after the other: the first start migrates the shared database.
    await a.start();
    await b.start();
    proxyA = await startChaosProxy(a.port);
    proxyB = await startChaosProxy(b.port);
  }, 180_000);

  afterEach(async () => {
    for (const client of clients) await client.close();
    clients = [];
  });

  afterAll(async () => {
    await proxyA?.close();
    await proxyB?.close();
    await a?.close();
    await b?.close();
    await database?.close();
  });

  const wsUrl = (relay: RelayProcess) => `ws://127.0.0.1:${relay.port}/v1/ws`;

  /** A registered, connected SDK client reaching the relay through `proxy`; records its connection states. */
  async function sdkClient(proxy: ChaosProxy, name: string) {
    const client = SecureChatClient.create({
      relayUrl: proxy.baseUrl,
      stores: createMemoryStores(),
      backOff: { initialDelayMs: 20, maxDelayMs: 400 },
      sendTimeoutMs: 3_000,
      deliveryReceipts: false,
    });
    clients.push(client);
    const states: ConnectionState[] = [];
    const messages: IncomingMessage[] = [];
    client.on(ChatEvent.ConnectionState, (state) => {
      states.push(state);
    });
    client.on(ChatEvent.Message, (message) => {
      messages.push(message);
    });
    await client.register(name, DEFAULT_TEST_PASSWORD);
    const drained = new Promise<void>((resolve) => client.once(ChatEvent.QueueEmpty, () => resolve()));
    await client.connect();
    await drained;
    return { client, states, messages };
  }

  /** The queue of `username`'s device 1, asked of `relay` over HTTP. */
  async function queued(relay: RelayProcess, username: string): Promise<number> {
    const login = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/login', { body: { username, password: DEFAULT_TEST_PASSWORD } });
    expect(login.status).toBe(200);
    const { status, body } = await httpJson<ListMessagesResponse>(relay, 'GET', '/v1/messages?limit=100', { token: login.body.accessToken });
    expect(status).toBe(200);
    return body.messages.length;
  }

  it('delivers a message sent through B to a device connected to A at once, on the open connection, and back', async () => {
    const alice = await sdkClient(proxyA, uniqueUsername('alice'));
    const bob = await sdkClient(proxyB, uniqueUsername('bob'));
    const aliceStatesBefore = [...alice.states];
    const bobStatesBefore = [...bob.states];

    await bob.client.send(alice.client.username as string, 'hello from B');
    await until(() => alice.messages.length === 1, 'the message at alice, on A');
    await alice.client.send(bob.client.username as string, 'hello from A');
    await until(() => bob.messages.length === 1, 'the reply at bob, on B');

    expect(alice.messages.map((message) => message.text)).toEqual(['hello from B']);
    expect(bob.messages.map((message) => message.text)).toEqual(['hello from A']);
    // Live: neither client lost its connection (no reconnect read the queue), so the bus woke the other instance.
    expect(alice.states).toEqual(aliceStatesBefore);
    expect(bob.states).toEqual(bobStatesBefore);
    expect(alice.client.connectionState).toBe(ConnectionState.Connected);
  }, 60_000);

  it('closes the older connection of a device with 4409 when the device connects to the other instance', async () => {
    const carol = await registerUser(a, uniqueUsername('carol'));
    const onA = await connectWs(wsUrl(a), carol.accessToken);
    await waitForFrame(onA, (frame) => frame.type === ServerFrameType.QueueEmpty);
    const closedOnA = waitForClose(onA.socket, 10_000);

    const onB = await connectWs(wsUrl(b), carol.accessToken);
    expect((await closedOnA).code).toBe(CloseCode.ConnectionReplaced);
    await waitForFrame(onB, (frame) => frame.type === ServerFrameType.QueueEmpty);
    expect(onB.socket.readyState).toBe(onB.socket.OPEN);

    // And back: A's new connection displaces B's.
    const closedOnB = waitForClose(onB.socket, 10_000);
    const againOnA = await connectWs(wsUrl(a), carol.accessToken);
    expect((await closedOnB).code).toBe(CloseCode.ConnectionReplaced);
    await waitForFrame(againOnA, (frame) => frame.type === ServerFrameType.QueueEmpty);
    expect(againOnA.socket.readyState).toBe(againOnA.socket.OPEN);
    againOnA.socket.close();
  }, 60_000);

  it("closes an account's sockets on the other instance when its password changes", async () => {
    const dave = await registerUser(b, uniqueUsername('dave'));
    const onA = await connectWs(wsUrl(a), dave.accessToken);
    await waitForFrame(onA, (frame) => frame.type === ServerFrameType.QueueEmpty);
    const closed = waitForClose(onA.socket, 10_000);
    const changed = await httpJson<AuthResponse>(b, 'POST', '/v1/auth/password', {
      token: dave.accessToken,
      body: { currentPassword: DEFAULT_TEST_PASSWORD, newPassword: 'another correct horse battery staple' },
    });
    expect(changed.status).toBe(200);
    expect(await closed).toEqual({ code: CloseCode.CredentialsChanged, reason: 'CREDENTIALS_CHANGED' });
  }, 60_000);

  it("delivers every accepted message exactly once and in order when an instance is SIGKILLed and its clients move to the other", async () => {
    const PER_SENDER = 40;
    const KILL_AFTER = 30;
    const onA = [await sdkClient(proxyA, uniqueUsername('ka')), await sdkClient(proxyA, uniqueUsername('kb'))];
    const onB = [await sdkClient(proxyB, uniqueUsername('kc')), await sdkClient(proxyB, uniqueUsername('kd'))];
    const everyone = [...onA, ...onB];
    const nameOf = (user: (typeof everyone)[number]) => user.client.username as string;

    const sends: Array<Promise<unknown>> = [];
    const expected = new Map<string, number>();
    for (const sender of everyone) {
      const others = everyone.filter((user) => user !== sender);
      const counters = new Map<string, number>();
      for (let k = 0; k < PER_SENDER; k++) {
        const to = nameOf(others[k % others.length] as (typeof everyone)[number]);
        const n = counters.get(to) ?? 0;
        counters.set(to, n + 1);
        expected.set(`${nameOf(sender)}>${to}`, n + 1);
        sends.push(sender.client.send(to, JSON.stringify({ from: nameOf(sender), n } satisfies Payload)));
      }
    }
    const settled = Promise.allSettled(sends);
    const delivered = () => everyone.reduce((sum, user) => sum + user.messages.length, 0);

    await until(() => delivered() >= KILL_AFTER, `${KILL_AFTER} deliveries before the kill`, 60_000);
    await a.kill();
    proxyA.retarget(b.port);
    proxyA.dropAll();

    const total = everyone.length * PER_SENDER;
    await until(() => delivered() >= total, `all ${total} messages delivered`, 120_000);
    const outcomes = await settled;
    expect(outcomes.filter((outcome) => outcome.status === 'rejected')).toEqual([]);

    // A's clients went through a reconnect, to B (the only relay left).
    for (const user of onA) expect(user.states.filter((state) => state === ConnectionState.Reconnecting).length).toBeGreaterThan(0);
    for (const user of onA) await until(() => user.client.connectionState === ConnectionState.Connected, 'a reconnect to B', 30_000);

    // Nothing is left to come again: every queue on the shared database is empty once acks are in.
    for (const user of everyone) await until(async () => (await queued(b, nameOf(user))) === 0, `the queue of ${nameOf(user)} emptied`, 30_000);

    for (const to of everyone) {
      const got = to.messages.map((message) => JSON.parse(message.text ?? '') as Payload);
      for (const from of everyone.filter((user) => user !== to)) {
        const count = expected.get(`${nameOf(from)}>${nameOf(to)}`) ?? 0;
        expect(got.filter((payload) => payload.from === nameOf(from)).map((payload) => payload.n)).toEqual(
          Array.from({ length: count }, (_, n) => n),
        );
      }
    }
    expect(delivered()).toBe(total);
  }, 300_000);
});
