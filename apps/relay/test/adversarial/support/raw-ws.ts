/**
 * A hand-written RFC 6455 client over node:net, for tests that must put on
 * the wire what no well-behaved WebSocket library sends: unmasked frames,
 * RSV bits, reserved opcodes, oversize or fragmented control frames, broken
 * fragmentation, invalid UTF-8. Test tooling only: the masking key only has
 * to be present (section 5.3), not unpredictable.
 *
 *   const raw = await openRawWebSocket(relay.wsUrl, { authorization: `Bearer ${token}` });
 *   raw.write(encodeFrame({ opcode: Opcode.Text, payload: '{"type":"ack"}', fin: false }));
 *   expect((await raw.closed()).code).toBe(1002);
 */
import { createHash, randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';

/** RFC 6455 section 5.2 opcodes; 0x3-0x7 and 0xB-0xF are reserved. */
export enum Opcode {
  Continuation = 0x0,
  Text = 0x1,
  Binary = 0x2,
  Close = 0x8,
  Ping = 0x9,
  Pong = 0xa,
}

export interface FrameSpec {
  opcode: number;
  payload?: Buffer | string;
  /** Default true. */
  fin?: boolean;
  /** RSV1..RSV3 as the three bits 0b100, 0b010, 0b001; default 0. */
  rsv?: number;
  /** Default true (a client must mask, section 5.1). */
  masked?: boolean;
  /** Claimed payload length, when it must differ from the bytes that follow (a header that lies). */
  declaredLength?: number;
}

/** One frame's bytes, as a client writes it (section 5.2). */
export function encodeFrame(spec: FrameSpec): Buffer {
  const payload = typeof spec.payload === 'string' ? Buffer.from(spec.payload, 'utf8') : (spec.payload ?? Buffer.alloc(0));
  const masked = spec.masked ?? true;
  const length = spec.declaredLength ?? payload.length;
  const first = ((spec.fin ?? true) ? 0x80 : 0) | (((spec.rsv ?? 0) & 0b111) << 4) | (spec.opcode & 0x0f);
  let header: Buffer;
  if (length < 126) {
    header = Buffer.from([first, (masked ? 0x80 : 0) | length]);
  } else if (length < 0x10000) {
    header = Buffer.alloc(4);
    header[0] = first;
    header[1] = (masked ? 0x80 : 0) | 126;
    header.writeUInt16BE(length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = first;
    header[1] = (masked ? 0x80 : 0) | 127;
    header.writeBigUInt64BE(BigInt(length), 2);
  }
  if (!masked) return Buffer.concat([header, payload]);
  const key = randomBytes(4);
  const body = Buffer.alloc(payload.length);
  for (let i = 0; i < payload.length; i++) body[i] = payload[i]! ^ key[i % 4]!;
  return Buffer.concat([header, key, body]);
}

/** A frame from the server (never masked). */
export interface ServerWireFrame {
  fin: boolean;
  rsv: number;
  opcode: number;
  payload: Buffer;
}

export interface CloseResult {
  /** The status code of the server's close frame; undefined if the connection ended without one. */
  code?: number;
  reason: string;
}

export interface RawWebSocket {
  socket: Socket;
  /** Every frame the server sent so far, in order. */
  frames: ServerWireFrame[];
  write(...frames: Buffer[]): void;
  /** Resolves with the first frame (already received or arriving) that satisfies `predicate`; rejects on close or after `timeoutMs`. */
  waitForFrame(predicate: (frame: ServerWireFrame) => boolean, timeoutMs?: number): Promise<ServerWireFrame>;
  /** Text frames' payloads parsed as JSON, in order. */
  texts(): unknown[];
  /**
   * Resolves once the TCP connection has ended, with the code of the
   * server's close frame (if one came before the end; a close frame is
   * echoed as section 5.5.1 asks); rejects after `timeoutMs`.
   */
  closed(timeoutMs?: number): Promise<CloseResult>;
  destroy(): void;
}

export interface RawWebSocketOptions {
  /** Answer the server's pings (default true; the relay terminates a socket that does not). */
  autoPong?: boolean;
}

const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** The answer to an upgrade request: the socket, or the refusal's status and body. */
export type UpgradeResult = { accepted: true; socket: RawWebSocket } | { accepted: false; status: number; body: string };

/**
 * Opens a TCP connection and sends an upgrade request (section 4.1).
 * Accepted: the server answered 101 with the right `Sec-WebSocket-Accept`.
 * Refused: any other answer, read until the server closes the connection.
 */
export function attemptUpgrade(wsUrl: string, headers: Record<string, string> = {}, options: RawWebSocketOptions = {}): Promise<UpgradeResult> {
  const url = new URL(wsUrl);
  const key = randomBytes(16).toString('base64');
  const socket = connect({ host: url.hostname, port: Number(url.port) });
  // A server that closes while a test still writes must not fail the test with EPIPE/ECONNRESET.
  socket.on('error', () => undefined);
  const request = [
    `GET ${url.pathname} HTTP/1.1`,
    `Host: ${url.host}`,
    'Upgrade: websocket',
    'Connection: Upgrade',
    `Sec-WebSocket-Key: ${key}`,
    'Sec-WebSocket-Version: 13',
    ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
    '',
    '',
  ].join('\r\n');
  socket.write(request);

  return new Promise((resolve, reject) => {
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      const lines = head.subarray(0, end).toString('latin1').split('\r\n');
      const accept = lines.find((line) => /^sec-websocket-accept:/i.test(line))?.split(':')[1]?.trim();
      const expected = createHash('sha1').update(key + WEBSOCKET_GUID).digest('base64');
      if (/^HTTP\/1\.1 101 /.test(lines[0] ?? '') && accept === expected) {
        socket.off('data', onData);
        socket.off('close', onClose);
        resolve({ accepted: true, socket: rawWebSocket(socket, head.subarray(end + 4), { autoPong: options.autoPong ?? true }) });
      }
    };
    const onClose = () => {
      const end = head.indexOf('\r\n\r\n');
      const status = /^HTTP\/1\.1 (\d{3}) /.exec(head.toString('latin1'))?.[1];
      if (end < 0 || status === undefined) reject(new Error(`connection closed during the upgrade: ${JSON.stringify(head.toString('latin1'))}`));
      else resolve({ accepted: false, status: Number(status), body: head.subarray(end + 4).toString('utf8') });
    };
    socket.on('data', onData);
    socket.once('close', onClose);
  });
}

/** `attemptUpgrade` that must succeed. */
export async function openRawWebSocket(wsUrl: string, headers: Record<string, string> = {}, options: RawWebSocketOptions = {}): Promise<RawWebSocket> {
  const result = await attemptUpgrade(wsUrl, headers, options);
  if (!result.accepted) throw new Error(`upgrade refused: ${result.status} ${result.body}`);
  return result.socket;
}

/** A plain TCP connection to the relay's port, for clients that never finish their request. */
export interface RawTcp {
  socket: Socket;
  /** Everything the server sent so far, as latin1 text. */
  received(): string;
  /** Resolves once the connection has ended; rejects after `timeoutMs`. */
  closed(timeoutMs?: number): Promise<void>;
}

export async function openTcp(wsUrl: string): Promise<RawTcp> {
  const url = new URL(wsUrl);
  const socket = connect({ host: url.hostname, port: Number(url.port) });
  socket.on('error', () => undefined);
  let received = '';
  socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
  const ended = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('close', () => reject(new Error('connection refused')));
  });
  return {
    socket,
    received: () => received,
    closed: (timeoutMs = 5000) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`connection still open after ${timeoutMs} ms`)), timeoutMs);
        void ended.then(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}

function rawWebSocket(socket: Socket, initial: Buffer, options: Required<RawWebSocketOptions>): RawWebSocket {
  const frames: ServerWireFrame[] = [];
  const listeners = new Set<(frame: ServerWireFrame) => void>();
  let buffered = Buffer.alloc(0);
  let ended = false;
  const endListeners = new Set<() => void>();

  const parse = () => {
    for (;;) {
      if (buffered.length < 2) return;
      const first = buffered[0]!;
      const second = buffered[1]!;
      let length = second & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buffered.length < 4) return;
        length = buffered.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (buffered.length < 10) return;
        length = Number(buffered.readBigUInt64BE(2));
        offset = 10;
      }
      if (buffered.length < offset + length) return;
      const frame: ServerWireFrame = {
        fin: (first & 0x80) !== 0,
        rsv: (first >> 4) & 0b111,
        opcode: first & 0x0f,
        payload: Buffer.from(buffered.subarray(offset, offset + length)),
      };
      buffered = buffered.subarray(offset + length);
      frames.push(frame);
      answer(frame);
      for (const listener of listeners) listener(frame);
    }
  };
  /** What any client does by itself: pong a ping (section 5.5.2), echo a close and end (section 5.5.1). */
  const answer = (frame: ServerWireFrame) => {
    if (socket.destroyed) return;
    if (frame.opcode === Opcode.Ping && options.autoPong) socket.write(encodeFrame({ opcode: Opcode.Pong, payload: frame.payload }));
    if (frame.opcode === Opcode.Close) socket.end(encodeFrame({ opcode: Opcode.Close, payload: frame.payload.subarray(0, 2) }));
  };
  const onData = (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    parse();
  };
  socket.on('data', onData);
  socket.once('close', () => {
    ended = true;
    for (const listener of endListeners) listener();
  });
  if (initial.length > 0) onData(initial);

  const closeFrameResult = (): CloseResult => {
    const close = frames.find((frame) => frame.opcode === Opcode.Close);
    if (!close) return { reason: '' };
    return {
      code: close.payload.length >= 2 ? close.payload.readUInt16BE(0) : undefined,
      reason: close.payload.subarray(2).toString('utf8'),
    };
  };

  return {
    socket,
    frames,
    write: (...chunks) => {
      if (!socket.destroyed) socket.write(Buffer.concat(chunks));
    },
    waitForFrame: (predicate, timeoutMs = 5000) => {
      const seen = frames.find(predicate);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const finish = (settle: () => void) => {
          clearTimeout(timer);
          listeners.delete(onFrame);
          endListeners.delete(onEnd);
          settle();
        };
        const onFrame = (frame: ServerWireFrame) => {
          if (predicate(frame)) finish(() => resolve(frame));
        };
        const onEnd = () => finish(() => reject(new Error('connection ended before the frame came')));
        const timer = setTimeout(() => finish(() => reject(new Error(`no matching frame within ${timeoutMs} ms`))), timeoutMs);
        if (ended) return onEnd();
        listeners.add(onFrame);
        endListeners.add(onEnd);
      });
    },
    texts: () => frames.filter((frame) => frame.opcode === Opcode.Text).map((frame) => JSON.parse(frame.payload.toString('utf8')) as unknown),
    closed: (timeoutMs = 5000) => {
      if (ended) return Promise.resolve(closeFrameResult());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          endListeners.delete(onEnd);
          reject(new Error(`connection still open after ${timeoutMs} ms`));
        }, timeoutMs);
        const onEnd = () => {
          clearTimeout(timer);
          resolve(closeFrameResult());
        };
        endListeners.add(onEnd);
      });
    },
    destroy: () => socket.destroy(),
  };
}
