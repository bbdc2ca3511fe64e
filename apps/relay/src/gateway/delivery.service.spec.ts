import { describe, expect, it } from '@jest/globals';
import { CloseCode, EnvelopeType, ErrorCode, ServerFrameType, type Envelope, type ServerFrame } from '@chat/protocol';
import { DeliveryService } from './delivery.service.js';
import { DeviceConnection, type FrameSocket } from './device-connection.js';

class FakeSocket implements FrameSocket {
  readyState = 1;
  frames: ServerFrame[] = [];
  closedWith?: [number | undefined, string | undefined];
  send(data: string): void {
    this.frames.push(JSON.parse(data) as ServerFrame);
  }
  close(code?: number, reason?: string): void {
    this.closedWith = [code, reason];
    this.readyState = 3;
  }
  get sentIds(): string[] {
    return this.frames.map((f) => (f.type === ServerFrameType.Message ? f.envelope.id : f.type));
  }
}

const envelope = (id: string): Envelope => ({
  id,
  source: 'alice',
  sourceDevice: 1,
  type: EnvelopeType.Signal,
  ciphertext: 'AA==',
  serverTimestamp: 0,
});

describe('DeviceConnection across the queue/live boundary', () => {
  it('holds live envelopes back until queue-empty and drops those the queue already carried', () => {
    const socket = new FakeSocket();
    const delivery = new DeliveryService();
    const connection = new DeviceConnection('row-1', 'acc-1', socket, 1);
    delivery.attach(connection);

    connection.sendQueued(envelope('a'));
    delivery.notify('row-1', envelope('b')); // stored during the drain and also read by it
    delivery.notify('row-1', envelope('c')); // stored after the last queue page was read
    connection.sendQueued(envelope('b'));
    connection.finishQueue();
    delivery.notify('row-1', envelope('d'));

    expect(socket.sentIds).toEqual(['a', 'b', 'queue-empty', 'c', 'd']);
  });

  it('does not push to a device that is not connected, nor to a closed socket', () => {
    const socket = new FakeSocket();
    const delivery = new DeliveryService();
    delivery.notify('row-1', envelope('a'));
    const connection = new DeviceConnection('row-1', 'acc-1', socket, 1);
    delivery.attach(connection);
    connection.finishQueue();
    socket.readyState = 3;
    delivery.notify('row-1', envelope('b'));
    expect(socket.sentIds).toEqual(['queue-empty']);
  });
});

describe('device notices', () => {
  const keysLow = { type: ServerFrameType.KeysLow, preKeys: 3, kyberPreKeys: 25, threshold: 20 } as const;

  it('holds a notice back until queue-empty, in order with live messages, then pushes at once', () => {
    const socket = new FakeSocket();
    const delivery = new DeliveryService();
    const connection = new DeviceConnection('row-1', 'acc-1', socket, 1);
    delivery.attach(connection);
    delivery.notify('row-1', envelope('a'));
    delivery.notice('row-1', keysLow);
    connection.finishQueue();
    delivery.notice('row-1', keysLow);
    expect(socket.sentIds).toEqual(['queue-empty', 'a', 'keys-low', 'keys-low']);
    expect(socket.frames[2]).toEqual(keysLow);
  });

  it('sends the connect notice right after queue-empty and drops held notices of its kind', () => {
    const socket = new FakeSocket();
    const delivery = new DeliveryService();
    const connection = new DeviceConnection('row-1', 'acc-1', socket, 1);
    delivery.attach(connection);
    delivery.notice('row-1', { ...keysLow, preKeys: 4 });
    delivery.notify('row-1', envelope('a'));
    connection.finishQueue(keysLow);
    expect(socket.frames).toEqual([
      { type: ServerFrameType.QueueEmpty },
      keysLow,
      { type: ServerFrameType.Message, envelope: envelope('a') },
    ]);
  });

  it('drops a notice for a device that is not connected here', () => {
    const socket = new FakeSocket();
    const delivery = new DeliveryService();
    const connection = new DeviceConnection('row-1', 'acc-1', socket, 1);
    delivery.attach(connection);
    connection.finishQueue();
    delivery.notice('row-2', keysLow);
    expect(socket.sentIds).toEqual(['queue-empty']);
  });
});

describe('DeliveryService connection registry', () => {
  it('closes the older connection of a device with 4409, whichever attaches first', () => {
    const delivery = new DeliveryService();
    const older = new FakeSocket();
    const newer = new FakeSocket();
    expect(delivery.attach(new DeviceConnection('row-1', 'acc-1', newer, 2))).toBe(true);
    expect(delivery.attach(new DeviceConnection('row-1', 'acc-1', older, 1))).toBe(false);
    expect(older.closedWith).toEqual([CloseCode.ConnectionReplaced, 'CONNECTION_REPLACED']);
    expect(newer.closedWith).toBeUndefined();

    const newest = new FakeSocket();
    delivery.attach(new DeviceConnection('row-1', 'acc-1', newest, 3));
    expect(newer.closedWith?.[0]).toBe(CloseCode.ConnectionReplaced);
  });

  it('keeps the newer connection registered when the replaced one detaches', () => {
    const delivery = new DeliveryService();
    const first = new DeviceConnection('row-1', 'acc-1', new FakeSocket(), 1);
    const secondSocket = new FakeSocket();
    const second = new DeviceConnection('row-1', 'acc-1', secondSocket, 2);
    delivery.attach(first);
    delivery.attach(second);
    second.finishQueue();
    delivery.detach(first);
    delivery.notify('row-1', envelope('x'));
    expect(secondSocket.sentIds).toEqual(['queue-empty', 'x']);
    delivery.detach(second);
    expect(delivery.isConnected('row-1')).toBe(false);
  });

  it("closes every socket of an account with the given code and leaves other accounts' sockets open", () => {
    const delivery = new DeliveryService();
    const [phone, laptop, stranger] = [new FakeSocket(), new FakeSocket(), new FakeSocket()];
    delivery.attach(new DeviceConnection('row-1', 'acc-1', phone, 1));
    delivery.attach(new DeviceConnection('row-2', 'acc-1', laptop, 2));
    delivery.attach(new DeviceConnection('row-3', 'acc-2', stranger, 3));
    delivery.closeAccount('acc-1', CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged);
    expect(phone.closedWith).toEqual([CloseCode.CredentialsChanged, 'CREDENTIALS_CHANGED']);
    expect(laptop.closedWith).toEqual([CloseCode.CredentialsChanged, 'CREDENTIALS_CHANGED']);
    expect(stranger.closedWith).toBeUndefined();
  });
});
