// Goal 5: one message to a 100-member group (smoke: 6) of real SDK clients
// on the real relay: the sender uploads it once, and the time from
// sendGroupMessage until every other member's client has emitted it, beside
// the same text sent 1:1 to each member one after another (the sessions
// exist already: createGroup opened them).
//
// Every client is a SecureChatClient with memory stores and the relay's
// development trust root (groups go sealed), in this one process: the
// members' decryption is serialised on this process's thread, as the 1:1
// baseline's is. Delivery receipts are off, so that only the message
// travels. The sender's transport counts its requests: a group message is
// one POST /v1/messages/multi-recipient and no 1:1 send.
//
// createGroup sends the group's state and the sender key to each member over
// 1:1 sessions it first sets up (PQXDH); each member, on applying the state,
// sends its profile key to every other member (n·(n−1) 1:1 messages), so
// that group messages to it can go sealed. The group messages are measured
// once that has settled: the first one after createGroup, then steady state.
import {
  ChatEvent,
  HttpRelayTransport,
  SecureChatClient,
  type SecureChatStores,
} from '@chat/signal-sdk';
import { createMemoryStores } from '@chat/signal-sdk/testing';
import type { MultiRecipientSendRequest, SealedSendRequest, SendMessageRequest, SendMessageResponse } from '@chat/protocol';
import { startRelay } from '@chat/relay-harness';
import { postgresBackendsOf, processCpuSeconds } from '../relay-load/cpu.js';
import { type BenchContext, type BenchRow, ratioOf, type Scenario } from '../report.js';
import { median, nowMs } from '../stats.js';
import { BENCH_PASSWORD } from '../support/accounts.js';

/** Counts the requests a client makes that carry messages. */
class CountingTransport extends HttpRelayTransport {
  multiRecipient = 0;
  oneToOne = 0;

  override sendMultiRecipient(auth: { accessKey: string } | { accessToken: string }, request: MultiRecipientSendRequest): Promise<SendMessageResponse> {
    this.multiRecipient++;
    return super.sendMultiRecipient(auth, request);
  }

  override sendSealed(accessKey: string, request: SealedSendRequest): Promise<SendMessageResponse> {
    this.oneToOne++;
    return super.sendSealed(accessKey, request);
  }

  override sendMessage(accessToken: string, message: SendMessageRequest): Promise<SendMessageResponse> {
    this.oneToOne++;
    return super.sendMessage(accessToken, message);
  }
}

interface Member {
  username: string;
  client: SecureChatClient;
  stores: SecureChatStores;
  transport: CountingTransport;
}

/**
 * When each member's client emitted each text. `until(text, members)`
 * resolves with the time of the last of them to emit it.
 */
class Arrivals {
  private readonly times = new Map<string, Map<Member, number>>();
  private readonly waiters: Array<() => void> = [];

  record(member: Member, text: string): void {
    const byMember = this.times.get(text) ?? new Map<Member, number>();
    if (!byMember.has(member)) byMember.set(member, nowMs());
    this.times.set(text, byMember);
    for (const wake of this.waiters.splice(0)) wake();
  }

  async until(text: string, members: readonly Member[], timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const byMember = this.times.get(text);
      const times = members.map((member) => byMember?.get(member));
      if (times.every((time): time is number => time !== undefined)) return Math.max(...times);
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        const missing = times.filter((time) => time === undefined).length;
        throw new Error(`${missing} of ${members.length} members did not get "${text}" within ${timeoutMs} ms`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(remaining, 1_000));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}

export const groupFanout: Scenario = {
  name: 'group-fanout',
  async run(ctx: BenchContext): Promise<BenchRow[]> {
    const size = ctx.smoke ? 6 : 100;
    const steadyMessages = ctx.smoke ? 2 : 5;
    const oneToOneRounds = ctx.smoke ? 1 : 3;
    const relay = await startRelay({ logLevel: 'warn' });
    const members: Member[] = [];
    const arrivals = new Arrivals();
    const errors: string[] = [];
    try {
      const trustRoot = await developmentTrustRoot(relay.url);
      const began = nowMs();
      const tag = Math.random().toString(36).slice(2, 8);
      // One-time prekeys for every other member's session set-up (the SDK's default and maximum batch is 100).
      const oneTimePreKeyBatch = Math.min(100, size + 4);
      for (let i = 0; i < size; i++) members.push(newMember(relay.url, trustRoot, oneTimePreKeyBatch, `g_${tag}_${i}`, arrivals, errors));
      await inBatches(members, 4, async (member) => {
        await member.client.register(member.username, BENCH_PASSWORD);
        await member.client.connect();
      });
      ctx.log(`${size} clients registered (keys uploaded) and connected in ${seconds(nowMs() - began)}`);

      const [sender, ...others] = members as [Member, ...Member[]];
      const updated = new Set<Member>();
      for (const member of others) member.client.on(ChatEvent.GroupUpdated, () => void updated.add(member));
      // Whose CPU the group's set-up takes: the relay's (and its Postgres backends'), or the clients' (this process).
      const relayCpu = () => processCpuSeconds(relay.pid) + postgresBackendsOf(relay.pid).reduce((sum, pid) => sum + processCpuSeconds(pid), 0);
      const clientsCpu = () => (process.cpuUsage().user + process.cpuUsage().system) / 1e6;
      const cpuBefore = { relay: relayCpu(), clients: clientsCpu() };
      const createBegan = nowMs();
      const group = await sender.client.createGroup('bench group', others.map((member) => member.username));
      const createMs = nowMs() - createBegan;
      ctx.log(`createGroup with ${others.length} members returned after ${seconds(createMs)}`);
      await waitFor(() => updated.size === others.length, 120_000, 'every member applying the group state');
      await waitFor(() => profileKeysSettled(members), 20 * 60_000, 'the members sharing their profile keys');
      const settledMs = nowMs() - createBegan;
      const setUpCpu = { relay: relayCpu() - cpuBefore.relay, clients: clientsCpu() - cpuBefore.clients };
      ctx.log(`every member has every other member's profile key ${seconds(settledMs)} after createGroup began`);
      if (errors.length > 0) ctx.log(`client errors so far: ${errors.length} (first: ${errors[0]})`);

      const sendToGroup = async (text: string) => {
        const before = { multiRecipient: sender.transport.multiRecipient, oneToOne: sender.transport.oneToOne };
        const start = nowMs();
        const sent = await sender.client.sendGroupMessage(group.id, text);
        const uploadedMs = nowMs() - start;
        const lastMs = (await arrivals.until(text, others, 120_000)) - start;
        return {
          uploadedMs,
          lastMs,
          sealed: sent.sealed,
          uploads: sender.transport.multiRecipient - before.multiRecipient,
          oneToOne: sender.transport.oneToOne - before.oneToOne,
        };
      };
      const first = await sendToGroup('group message 0');
      ctx.log(`first group message: uploaded in ${first.uploadedMs.toFixed(1)} ms, all ${others.length} have it after ${first.lastMs.toFixed(1)} ms`);
      const steady = [];
      for (let i = 1; i <= steadyMessages; i++) steady.push(await sendToGroup(`group message ${i}`));

      const oneToOne: number[] = [];
      for (let round = 0; round < oneToOneRounds; round++) {
        const text = `one-to-one message ${round}`;
        const start = nowMs();
        for (const member of others) await sender.client.send(member.username, text);
        oneToOne.push((await arrivals.until(text, others, 120_000)) - start);
      }
      ctx.log(`1:1 to each member one after another: ${oneToOne.map((ms) => ms.toFixed(0)).join(', ')} ms`);

      const steadyMs = median(steady.map((message) => message.lastMs));
      const baselineMs = median(oneToOne);
      const uploadCounts = [first, ...steady].map((message) => message.uploads);
      const oneToOneDuringGroup = [first, ...steady].reduce((sum, message) => sum + message.oneToOne, 0);
      const uploadsOnce = uploadCounts.every((count) => count === 1) && oneToOneDuringGroup === 0;
      const baseline = { name: `1:1 to each of ${others.length}, one after another`, value: baselineMs };
      const sizeNote = `${size} members (sender + ${others.length}), one device each, all clients in one process, delivery receipts off`;
      return [
        {
          scenario: 'group-fanout',
          metric: 'group message until every member has it',
          value: steadyMs,
          unit: 'ms',
          baseline,
          ratio: ratioOf(steadyMs, baselineMs),
          note: `${sizeNote}; median of ${steady.length} messages sent one at a time; upload answered after ${median(steady.map((m) => m.uploadedMs)).toFixed(1)} ms; 1:1 baseline median of ${oneToOne.length} rounds`,
        },
        {
          scenario: 'group-fanout',
          metric: 'first group message after createGroup',
          value: first.lastMs,
          unit: 'ms',
          baseline,
          ratio: ratioOf(first.lastMs, baselineMs),
          note: `${first.sealed ? 'sealed' : 'authenticated fallback'}; upload answered after ${first.uploadedMs.toFixed(1)} ms`,
        },
        {
          scenario: 'group-fanout',
          metric: 'sender uploads per group message',
          value: Math.max(...uploadCounts),
          unit: 'uploads',
          goal: { text: 'one upload', met: uploadsOnce },
          note: `POST /v1/messages/multi-recipient per message: ${uploadCounts.join(', ')}; 1:1 sends meanwhile: ${oneToOneDuringGroup}; ${
            [first, ...steady].every((message) => message.sealed) ? 'all sealed' : 'some not sealed'
          }`,
        },
        {
          scenario: 'group-fanout',
          metric: `createGroup (${others.length} members, new sessions)`,
          value: createMs,
          unit: 'ms',
          note:
            `then every member had every other's profile key after ${seconds(settledMs)} (${others.length * (others.length + 1)} 1:1 profile-key messages); ` +
            `CPU until then: relay ${setUpCpu.relay.toFixed(1)} s${ctx.database === 'postgres' ? ' (with its Postgres backends)' : ''}, all clients ${setUpCpu.clients.toFixed(1)} s; client errors: ${errors.length}`,
        },
      ];
    } finally {
      await Promise.all(members.map((member) => member.client.close().catch(() => undefined)));
      await relay.close();
    }
  },
};

function newMember(relayUrl: string, trustRoot: string, oneTimePreKeyBatch: number, username: string, arrivals: Arrivals, errors: string[]): Member {
  const stores = createMemoryStores();
  const transport = new CountingTransport(relayUrl);
  const client = SecureChatClient.create({ relayUrl, stores, transport, trustRoot, oneTimePreKeyBatch, deliveryReceipts: false });
  const member: Member = { username, client, stores, transport };
  client.on(ChatEvent.Message, (message) => {
    if (message.text !== undefined) arrivals.record(member, message.text);
  });
  client.on(ChatEvent.Error, (error) => void errors.push(`${username}: ${error.code} ${error.message}`));
  return member;
}

/** `GET /v1/certificate/trust-root`: the relay's development trust root (a relay started without configured sealed-sender keys). */
async function developmentTrustRoot(relayUrl: string): Promise<string> {
  const response = await fetch(`${relayUrl}/v1/certificate/trust-root`);
  if (!response.ok) throw new Error(`GET /v1/certificate/trust-root: ${response.status} ${await response.text()}`);
  return ((await response.json()) as { trustRoot: string }).trustRoot;
}

/** Whether every member holds every other member's profile key (what makes group messages to it sealed). */
async function profileKeysSettled(members: readonly Member[]): Promise<boolean> {
  for (const member of members) {
    for (const other of members) {
      if (other !== member && !(await member.stores.metadata.getPeerProfileKey(other.username))) return false;
    }
  }
  return true;
}

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function inBatches<T>(items: readonly T[], concurrency: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) await task(items[next++] as T);
    }),
  );
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
