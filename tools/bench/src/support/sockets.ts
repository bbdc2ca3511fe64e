// Many raw WebSocket clients from the load generator, opened with a bounded
// number of handshakes in flight.
import WebSocket from 'ws';

export interface OpenSocketsOptions {
  /** Handshakes in flight at once (default 100). */
  concurrency?: number;
  /** Headers of socket i's upgrade request (the relay's: its device's bearer token). */
  headers?: (index: number) => Record<string, string>;
  /**
   * Resolves when socket i counts as ready; default: when it is open. The
   * relay's sockets are ready at their `queue-empty` frame: authenticated,
   * attached, and their stored queue read.
   */
  ready?: (socket: WebSocket) => Promise<void>;
  /** Called every 1,000 ready sockets. */
  onProgress?: (open: number) => void;
}

/** Opens `count` sockets to `url`; rejects (closing those it opened) if one fails. */
export async function openSockets(url: string, count: number, options: OpenSocketsOptions = {}): Promise<WebSocket[]> {
  const sockets: WebSocket[] = [];
  let next = 0;
  let ready = 0;
  const open = async (index: number) => {
    const socket = new WebSocket(url, { headers: options.headers?.(index) });
    sockets.push(socket);
    // Listening from the start, so that a frame sent right behind the handshake is not missed.
    const readiness = options.ready?.(socket);
    readiness?.catch(() => undefined);
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.once('unexpected-response', (_request, response) => reject(new Error(`socket ${index}: HTTP ${response.statusCode}`)));
      socket.once('open', resolve);
    });
    await readiness;
  };
  const worker = async () => {
    while (next < count) {
      await open(next++);
      if (++ready % 1_000 === 0) options.onProgress?.(ready);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(options.concurrency ?? 100, count) }, worker));
  } catch (error) {
    closeSockets(sockets);
    throw error;
  }
  return sockets;
}

/** Resolves at the first text frame whose JSON `type` is `type`. */
export function frameOfType(socket: WebSocket, type: string, timeoutMs = 60_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off('message', onMessage);
      reject(new Error(`no ${type} frame within ${timeoutMs} ms`));
    }, timeoutMs);
    const onMessage = (data: Buffer) => {
      if ((JSON.parse(data.toString('utf8')) as { type?: string }).type !== type) return;
      clearTimeout(timer);
      socket.off('message', onMessage);
      resolve();
    };
    socket.on('message', onMessage);
  });
}

export function closeSockets(sockets: readonly WebSocket[]): void {
  for (const socket of sockets) socket.terminate();
}
