import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { ChatEvent, HttpRelayTransport, SecureChatClient, type RelayTransport } from '@chat/signal-sdk';
import { createMemoryStores } from '@chat/signal-sdk/testing';
import { ClientFrameType, type ListMessagesResponse } from '@chat/protocol';
import { startChaosProxy, type ChaosProxy } from './support/chaos-proxy.js';
import { startRelayProcess, type RelayProcess } from './support/relay-process.js';
import { DEFAULT_TEST_PASSWORD, httpJson, uniqueUsername } from './support/test-relay.js';
import { seededRandom } from './support/wait.js';

// The delivery guarantee under faults (issue 5, acceptance 2): a message the
// relay accepted reaches the recipient's app exactly once and in per-sender
// order, although the relay process is SIGKILLed and restarted several times
// while 1,000 messages are in flight, and the network drops connections at
// random. The relay runs as a child process on the run's database (a
// Postgres scratch database, or its own embedded PGlite in a data folder
// that outlives the kills); clients are real SDK clients over real sockets,
// through a proxy that drops connections.

const USERS = 4;
const MESSAGES_PER_SENDER = 250;
const TOTAL = USERS * MESSAGES_PER_SENDER;
/** Delivered-message counts at which the relay is killed. */
const KILL_AT = [150, 450, 750];

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The SDK's real transport, except that acks are lost on the way with
 * probability `rate.value`, as if the connection dropped right after the
 * relay sent a message: the WebSocket `ack` frame is not sent, the HTTP ack
 * is not made. Everything else passes through unchanged.
 */
function ackDroppingTransport(relayUrl: string, rate: { value: number }, random: () => number): RelayTransport {
  const inner = new HttpRelayTransport(relayUrl);
  return new Proxy(inner, {
    get(target, property, receiver) {
      if (property === 'ackMessage') {
        return async (accessToken: string, messageId: string) => {
          if (random() < rate.value) return;
          await target.ackMessage(accessToken, messageId);
        };
      }
      if (property === 'openSocket') {
        const openSocket: RelayTransport['openSocket'] = async (accessToken, listener) => {
          const socket = await target.openSocket(accessToken, listener);
          return new Proxy(socket, {
            get(socketTarget, socketProperty, socketReceiver) {
              if (socketProperty === 'send') {
                return (frame: { type: string }) => {
                  if (frame.type === ClientFrameType.Ack && random() < rate.value) return;
                  socketTarget.send(frame as never);
                };
              }
              const value: unknown = Reflect.get(socketTarget, socketProperty, socketReceiver);
              return typeof value === 'function' ? value.bind(socketTarget) : value;
            },
          });
        };
        return openSocket;
      }
      const value: unknown = Reflect.get(target, property, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

interface Payload {
  from: string;
  /** Position among the messages `from` sent to this recipient. */
  n: number;
}

describe('delivery under faults: relay SIGKILLs, random disconnects, dropped acks', () => {
  let relay: RelayProcess;
  let proxy: ChaosProxy;
  let clients: SecureChatClient[] = [];

  beforeAll(async () => {
    relay = await startRelayProcess();
    await relay.start();
    proxy = await startChaosProxy(relay.port);
  }, 120_000);

  afterEach(async () => {
    for (const client of clients) await client.close();
    clients = [];
  });

  afterAll(async () => {
    await proxy?.close();
    await relay?.close();
  });

  /** The relay's queue of `username`'s device 1, asked over HTTP straight to the relay. */
  async function queued(username: string): Promise<number> {
    const login = await httpJson(relay, 'POST', '/v1/auth/login', { body: { username, password: DEFAULT_TEST_PASSWORD } });
    expect(login.status).toBe(200);
    const { status, body } = await httpJson<ListMessagesResponse>(relay, 'GET', '/v1/messages?limit=100', { token: login.body.accessToken });
    expect(status).toBe(200);
    return body.messages.length;
  }

  async function runFaultScenario(seed: number, ackDropRate: number): Promise<void> {
    const random = seededRandom(seed);
    const dropRate = { value: ackDropRate };
    const names = Array.from({ length: USERS }, (_, i) => uniqueUsername(`fault${i}`));
    const received = new Map<string, Payload[]>(names.map((name) => [name, []]));
    let delivered = 0;

    for (const name of names) {
      const client = SecureChatClient.create({
        relayUrl: proxy.baseUrl,
        stores: createMemoryStores(),
        backOff: { initialDelayMs: 20, maxDelayMs: 400 },
        sendTimeoutMs: 3_000,
        deliveryReceipts: false,
        ...(ackDropRate > 0 && { transport: ackDroppingTransport(proxy.baseUrl, dropRate, random) }),
      });
      clients.push(client);
      await client.register(name, DEFAULT_TEST_PASSWORD);
      client.on(ChatEvent.Message, (message) => {
        received.get(name)?.push(JSON.parse(message.text ?? '') as Payload);
        delivered++;
      });
      await client.connect();
    }

    // Every client queues all of its messages at once: 1,000 in flight.
    const sends: Array<Promise<unknown>> = [];
    const expected = new Map<string, number>();
    names.forEach((from, i) => {
      const others = names.filter((name) => name !== from);
      const counters = new Map<string, number>();
      for (let k = 0; k < MESSAGES_PER_SENDER; k++) {
        const to = others[k % others.length] as string;
        const n = counters.get(to) ?? 0;
        counters.set(to, n + 1);
        expected.set(`${from}>${to}`, n + 1);
        sends.push((clients[i] as SecureChatClient).send(to, JSON.stringify({ from, n } satisfies Payload)));
      }
    });
    const settled = Promise.allSettled(sends);

    const kills = [...KILL_AT];
    const deadline = Date.now() + 240_000;
    while ((delivered < TOTAL || kills.length > 0) && Date.now() < deadline) {
      if (kills.length > 0 && delivered >= Math.min(kills[0] as number, TOTAL)) {
        kills.shift();
        await relay.kill();
        await sleep(200 + Math.floor(random() * 300));
        await relay.start();
      }
      if (random() < 0.5) proxy.dropRandom(random);
      await sleep(50 + Math.floor(random() * 100));
    }
    expect(kills).toEqual([]);
    expect(relay.starts).toBeGreaterThanOrEqual(1 + KILL_AT.length);

    // Every send was accepted (the outbox retried through the kills and drops).
    const outcomes = await settled;
    expect(outcomes.filter((outcome) => outcome.status === 'rejected')).toEqual([]);

    // Let the last acks through, and make every unacked message come again:
    // the SDK must recognise each redelivery and keep it from the app.
    dropRate.value = 0;
    proxy.dropAll();
    for (const name of names) {
      for (let i = 0; i < 200 && (await queued(name)) > 0; i++) await sleep(100);
      expect(await queued(name)).toBe(0);
    }

    for (const to of names) {
      const got = received.get(to) as Payload[];
      for (const from of names.filter((name) => name !== to)) {
        const count = expected.get(`${from}>${to}`) ?? 0;
        expect(got.filter((payload) => payload.from === from).map((payload) => payload.n)).toEqual(Array.from({ length: count }, (_, n) => n));
      }
    }
    expect(delivered).toBe(TOTAL);
  }

  it('delivers 1,000 messages exactly once and in per-sender order across three SIGKILLs of the relay and random disconnects', async () => {
    await runFaultScenario(0x5eed, 0);
  }, 300_000);

  it('does the same while a third of the acks are lost on the way', async () => {
    await runFaultScenario(0xacc5, 0.33);
  }, 300_000);
});
