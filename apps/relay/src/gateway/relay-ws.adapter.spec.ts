import { EventEmitter } from 'node:events';
import { describe, expect, it } from '@jest/globals';
import type { MessageMappingProperties } from '@nestjs/websockets';
import { of } from 'rxjs';
import type { WebSocket } from 'ws';
import { RelayWsAdapter } from './relay-ws.adapter.js';

/** What bindMessageHandlers touches of a socket: its listeners. */
const fakeSocket = () => new EventEmitter() as unknown as WebSocket & EventEmitter;

describe('RelayWsAdapter.bindMessageHandlers', () => {
  it('leaves a socket of a gateway without @SubscribeMessage handlers untouched (no per-socket streams)', () => {
    const socket = fakeSocket();
    new RelayWsAdapter().bindMessageHandlers(socket, [], (data) => of(data));
    expect(socket.listenerCount('message')).toBe(0);
    expect(socket.listenerCount('close')).toBe(0);
  });

  it("keeps Nest's binding for a gateway that has handlers", () => {
    const socket = fakeSocket();
    const handler: MessageMappingProperties = { message: 'event', methodName: 'handle', callback: () => of(undefined), isAckHandledManually: false };
    new RelayWsAdapter().bindMessageHandlers(socket, [handler], (data) => of(data));
    expect(socket.listenerCount('message')).toBe(1);
  });
});
