// Sender/receiver pairs over real WebSockets, against the relay or the bare
// forwarder, counted the same way for both: a message is done when its
// receiver has it (and has answered it with an ack frame). Closed loop (a
// window of messages in flight per pair) measures the most a target carries;
// open loop (paced sending at a fixed rate) measures latency at a given load.
import WebSocket from 'ws';
import { nowMs, percentile } from '../stats.js';
import { type CpuShares, watchCpu } from './cpu.js';
import { ackFrame, PayloadTemplate, readFrame, sendFrame } from './wire.js';

/** One sender and one receiver, and how to reach the target as each. */
export interface PairEndpoints {
  sender: { url: string; headers?: Record<string, string> };
  receiver: { url: string; headers?: Record<string, string> };
  /** The receiver's username, the send frame's `to`. */
  to: string;
  /** The receiver device's registration id, as a send names it. */
  registrationId: number;
}

export interface LoadTarget {
  /** 'relay': the receiver waits for `queue-empty` before the load starts; the sender gets `sent` frames. */
  kind: 'relay' | 'bare';
  pairs: PairEndpoints[];
}

export type LoadShape =
  /** Each pair keeps `window` messages sent and not yet received. */
  | { kind: 'closed'; window: number }
  /** Every pair sends at `ratePerSecond / pairs`, whatever comes back. */
  | { kind: 'paced'; ratePerSecond: number };

export interface LoadRun {
  shape: LoadShape;
  payloadBytes: number;
  warmupMs: number;
  measureMs: number;
  /** How long to wait, after sending stops, for the messages still in flight. */
  drainTimeoutMs?: number;
  /** Processes whose CPU share over the measured interval is reported beside this one's ('load generator'). */
  watch?: Record<string, number | readonly number[] | (() => readonly number[]) | undefined>;
}

export interface LoadResult {
  /** Messages received (and acked) per second in the measured interval. */
  throughput: number;
  /** Send call to receipt at the receiver's socket, of the messages sent in the measured interval. */
  latencyMs: { p50: number; p99: number; max: number; samples: number };
  /** Send call to the relay's `sent` answer (relay only), same messages. */
  acceptedMs?: { p50: number; p99: number };
  sent: number;
  received: number;
  /** Sent and never received by the end of the drain. */
  lost: number;
  duplicates: number;
  /** Received before a message of the same pair sent earlier (concurrent sends may be stored in either order). */
  outOfOrder: number;
  errors: number;
  firstError?: string;
  /** CPU over the measured interval: this process ('load generator') and the watched ones, each of one core. */
  cpu: CpuShares;
  measuredMs: number;
}

/** Slots of the per-pair ring of send times: the most messages one pair may have in flight. */
const RING = 1 << 16;
const RING_MASK = RING - 1;

interface Pair {
  endpoints: PairEndpoints;
  sender: WebSocket;
  receiver: WebSocket;
  sent: number;
  received: number;
  maxSequence: number;
  sentAt: Float64Array;
  receivedFlag: Uint8Array;
}

interface Counters {
  measuring: boolean;
  measureFrom: number;
  measureTo: number;
  receivedInWindow: number;
  latencies: number[];
  accepted: number[];
  duplicates: number;
  outOfOrder: number;
  errors: number;
  firstError?: string;
}

/** Opens every pair's sockets (and, for the relay, waits for the receivers' `queue-empty`), runs the load, closes them. */
export async function runLoad(target: LoadTarget, run: LoadRun): Promise<LoadResult> {
  const payload = new PayloadTemplate(run.payloadBytes);
  const counters: Counters = {
    measuring: false,
    measureFrom: Number.POSITIVE_INFINITY,
    measureTo: Number.POSITIVE_INFINITY,
    receivedInWindow: 0,
    latencies: [],
    accepted: [],
    duplicates: 0,
    outOfOrder: 0,
    errors: 0,
  };
  const pairs = await Promise.all(target.pairs.map((endpoints) => openPair(target.kind, endpoints)));
  let sending = true;
  const window = run.shape.kind === 'closed' ? run.shape.window : 0;

  const sendOne = (pair: Pair) => {
    const sequence = pair.sent++;
    if (sequence - pair.received >= RING) throw new Error(`more than ${RING} messages in flight on one pair`);
    const slot = sequence & RING_MASK;
    pair.sentAt[slot] = nowMs();
    pair.receivedFlag[slot] = 0;
    pair.sender.send(sendFrame(pair.endpoints.to, pair.endpoints.registrationId, String(sequence), payload.ciphertext(sequence)));
  };

  for (const pair of pairs) {
    pair.receiver.on('message', (data: Buffer) => {
      const frame = readFrame(data.toString('utf8'));
      if (frame.kind === 'other') {
        if (frame.type === 'error') noteError(counters, frame.text);
        return;
      }
      const now = nowMs();
      pair.receiver.send(ackFrame(frame.id));
      const slot = frame.sequence & RING_MASK;
      if (frame.sequence >= pair.sent || pair.receivedFlag[slot] === 1) {
        counters.duplicates++;
        return;
      }
      pair.receivedFlag[slot] = 1;
      pair.received++;
      if (frame.sequence < pair.maxSequence) counters.outOfOrder++;
      else pair.maxSequence = frame.sequence;
      const sentAt = pair.sentAt[slot];
      if (sentAt >= counters.measureFrom && sentAt < counters.measureTo) counters.latencies.push(now - sentAt);
      if (now >= counters.measureFrom && now < counters.measureTo) counters.receivedInWindow++;
      if (sending && window > 0 && pair.sent - pair.received < window) sendOne(pair);
    });
    pair.sender.on('message', (data: Buffer) => {
      const text = data.toString('utf8');
      if (target.kind === 'bare') return; // the receiver's acks, forwarded back
      if (text.startsWith('{"type":"sent"')) {
        const requestIdAt = text.indexOf('"requestId":"') + 13;
        const sequence = Number(text.slice(requestIdAt, text.indexOf('"', requestIdAt)));
        const sentAt = pair.sentAt[sequence & RING_MASK];
        if (sentAt >= counters.measureFrom && sentAt < counters.measureTo) counters.accepted.push(nowMs() - sentAt);
        return;
      }
      const frame = readFrame(text);
      if (frame.kind === 'other' && frame.type === 'error') noteError(counters, frame.text);
    });
  }

  const started = nowMs();
  counters.measureFrom = started + run.warmupMs;
  counters.measureTo = counters.measureFrom + run.measureMs;
  let pacer: NodeJS.Timeout | undefined;
  if (run.shape.kind === 'closed') {
    for (const pair of pairs) for (let i = 0; i < window; i++) sendOne(pair);
  } else {
    // Open loop: each pair's count is due by the clock, whatever has come back.
    const perPairPerMs = run.shape.ratePerSecond / pairs.length / 1000;
    pacer = setInterval(() => {
      const due = Math.floor((nowMs() - started) * perPairPerMs);
      for (const pair of pairs) while (pair.sent < due) sendOne(pair);
    }, 1);
  }

  await sleep(counters.measureFrom - nowMs());
  // A function names its processes when the measured interval begins (a pool opens connections as load grows).
  const watched = Object.fromEntries(Object.entries(run.watch ?? {}).map(([name, pids]) => [name, typeof pids === 'function' ? pids() : pids]));
  const cpuSince = watchCpu({ 'load generator': process.pid, ...watched });
  await sleep(counters.measureTo - nowMs());
  const cpu = cpuSince();
  const measuredMs = nowMs() - counters.measureFrom;
  sending = false;
  clearInterval(pacer);

  const drainDeadline = nowMs() + (run.drainTimeoutMs ?? 15_000);
  while (pairs.some((pair) => pair.received < pair.sent) && nowMs() < drainDeadline) await sleep(20);
  // Acks of the last messages reach the relay before the sockets close.
  await sleep(100);
  await Promise.all(pairs.flatMap((pair) => [closeSocket(pair.sender), closeSocket(pair.receiver)]));

  const sent = pairs.reduce((sum, pair) => sum + pair.sent, 0);
  const received = pairs.reduce((sum, pair) => sum + pair.received, 0);
  const sortedAccepted = counters.accepted;
  return {
    throughput: (counters.receivedInWindow / measuredMs) * 1000,
    latencyMs: {
      p50: percentile(counters.latencies, 50),
      p99: percentile(counters.latencies, 99),
      max: percentile(counters.latencies, 100),
      samples: counters.latencies.length,
    },
    ...(target.kind === 'relay' && { acceptedMs: { p50: percentile(sortedAccepted, 50), p99: percentile(sortedAccepted, 99) } }),
    sent,
    received,
    lost: sent - received,
    duplicates: counters.duplicates,
    outOfOrder: counters.outOfOrder,
    errors: counters.errors,
    ...(counters.firstError !== undefined && { firstError: counters.firstError }),
    cpu,
    measuredMs,
  };
}

function noteError(counters: Counters, text: string): void {
  counters.errors++;
  counters.firstError ??= text.slice(0, 300);
}

async function openPair(kind: LoadTarget['kind'], endpoints: PairEndpoints): Promise<Pair> {
  const [sender, receiver] = await Promise.all([
    openSocket(endpoints.sender.url, endpoints.sender.headers, false),
    openSocket(endpoints.receiver.url, endpoints.receiver.headers, kind === 'relay'),
  ]);
  return { endpoints, sender, receiver, sent: 0, received: 0, maxSequence: -1, sentAt: new Float64Array(RING), receivedFlag: new Uint8Array(RING) };
}

/** Resolves once the socket is open, and, with `waitForQueueEmpty`, once the relay said its queue is sent. */
function openSocket(url: string, headers: Record<string, string> | undefined, waitForQueueEmpty: boolean): Promise<WebSocket> {
  const socket = new WebSocket(url, { headers, perMessageDeflate: false });
  return new Promise<WebSocket>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${waitForQueueEmpty ? 'queue-empty' : 'open'} from ${url} in 15 s`)), 15_000);
    const done = () => {
      clearTimeout(timer);
      socket.off('message', onFirst);
      resolve(socket);
    };
    const onFirst = (data: Buffer) => {
      if (data.toString('utf8').startsWith('{"type":"queue-empty"')) done();
    };
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.once('unexpected-response', (_request, response) => {
      clearTimeout(timer);
      reject(new Error(`upgrade refused by ${url}: ${response.statusCode}`));
    });
    socket.once('open', () => {
      if (!waitForQueueEmpty) done();
    });
    if (waitForQueueEmpty) socket.on('message', onFirst);
  });
}

function closeSocket(socket: WebSocket): Promise<void> {
  if (socket.readyState === WebSocket.CLOSED) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      socket.terminate();
      resolve();
    }, 2_000);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.close(1000);
  });
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)));
