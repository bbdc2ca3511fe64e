import type { WebSocket } from 'ws';

interface CorkableStream {
  cork(): void;
  uncork(): void;
}

const held = new Set<CorkableStream>();

/**
 * Holds the socket's TCP writes until the code running now and the promise
 * jobs it queued have run (`process.nextTick`), so that the frames a batch
 * answers together (`sent` for each send of a group commit, the messages it
 * stored) leave in one write, one system call, rather than one each. ws
 * corks each frame's header and payload the same way; corks nest.
 *
 * Uses ws's underlying `net.Socket` (`_socket`); a socket without one is left as it is.
 */
export function holdWritesUntilTickEnd(socket: WebSocket): void {
  const stream = (socket as unknown as { _socket?: CorkableStream | null })._socket;
  if (!stream || held.has(stream)) return;
  stream.cork();
  held.add(stream);
  process.nextTick(() => {
    held.delete(stream);
    stream.uncork();
  });
}
