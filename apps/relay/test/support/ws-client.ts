/** A real `ws` client for gateway e2e specs, with frame waits that time out instead of hanging. */
import WebSocket, { type ClientOptions } from 'ws';
import type { ServerFrame } from '@chat/protocol';

export interface WsClient {
  socket: WebSocket;
  /** Every frame received so far, in order. */
  frames: ServerFrame[];
  /** Told of each frame as it is appended to `frames` (the same object). */
  onFrame: Set<(frame: ServerFrame) => void>;
  /** Pings received since the socket was created (counted before `open`, so none is missed). */
  pings: number;
  send(frame: unknown): void;
}

/** Opens an authenticated socket; resolves once it is open. */
export async function connectWs(wsUrl: string, token: string, options: ClientOptions = {}): Promise<WsClient> {
  const socket = new WebSocket(wsUrl, { ...options, headers: { authorization: `Bearer ${token}`, ...options.headers } });
  const frames: ServerFrame[] = [];
  const onFrame = new Set<(frame: ServerFrame) => void>();
  socket.on('message', (data) => {
    const frame = JSON.parse(data.toString()) as ServerFrame;
    frames.push(frame);
    for (const listener of onFrame) listener(frame);
  });
  const client: WsClient = {
    socket,
    frames,
    onFrame,
    pings: 0,
    send: (frame) => socket.send(typeof frame === 'string' ? frame : JSON.stringify(frame)),
  };
  socket.on('ping', () => client.pings++);
  await new Promise<void>((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
    socket.once('unexpected-response', (_request, response) => reject(new Error(`upgrade refused: ${response.statusCode}`)));
  });
  return client;
}

/**
 * Resolves with the first frame (already received or arriving) that
 * satisfies `predicate`; rejects after `timeoutMs` or if the socket closes first.
 */
export function waitForFrame<T extends ServerFrame = ServerFrame>(
  client: WsClient,
  predicate: (frame: ServerFrame) => boolean,
  timeoutMs = 5000,
): Promise<T> {
  const seen = client.frames.find(predicate);
  if (seen) return Promise.resolve(seen as T);
  return new Promise<T>((resolve, reject) => {
    const onFrame = (frame: ServerFrame) => {
      if (predicate(frame)) finish(() => resolve(frame as T));
    };
    const onClose = (code: number) => finish(() => reject(new Error(`socket closed (${code}) before the frame came`)));
    const timer = setTimeout(() => finish(() => reject(new Error(`no matching frame within ${timeoutMs} ms`))), timeoutMs);
    const finish = (settle: () => void) => {
      clearTimeout(timer);
      client.onFrame.delete(onFrame);
      client.socket.off('close', onClose);
      settle();
    };
    client.onFrame.add(onFrame);
    client.socket.once('close', onClose);
  });
}

/** Resolves with the close code and reason; rejects after `timeoutMs`. */
export function waitForClose(socket: WebSocket, timeoutMs = 5000): Promise<{ code: number; reason: string }> {
  if (socket.readyState === WebSocket.CLOSED) return Promise.reject(new Error('socket already closed'));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket still open after ${timeoutMs} ms`)), timeoutMs);
    socket.once('close', (code, reason) => {
      clearTimeout(timer);
      resolve({ code, reason: reason.toString() });
    });
  });
}

/** Tries an upgrade that should be refused; resolves with the HTTP status and JSON body of the refusal. */
export function refusedUpgrade(
  wsUrl: string,
  headers: Record<string, string>,
): Promise<{ status: number; contentType: string | undefined; body: unknown }> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(wsUrl, { headers });
    socket.once('open', () => {
      socket.terminate();
      reject(new Error('the upgrade was accepted'));
    });
    socket.once('error', () => undefined);
    socket.once('unexpected-response', (_request, response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (text += chunk));
      response.on('end', () => {
        resolve({ status: response.statusCode ?? 0, contentType: response.headers['content-type'], body: JSON.parse(text) });
        socket.terminate();
      });
    });
  });
}
