import { ServerFrameType, type Envelope, type KeysLowFrame, type MessageFrame, type ServerFrame } from '@chat/protocol';

/** A frame the relay pushes to a device of its own accord that is not an envelope. */
export type DeviceNotice = KeysLowFrame;

/** The part of a `ws` WebSocket a device connection uses; a fake in unit specs. */
export interface FrameSocket {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

const OPEN = 1;

/**
 * One device's live socket. Until the stored queue has been sent it holds
 * back live envelopes and notices, then sends them in order, less the
 * envelopes the queue already carried: a message stored while the queue is
 * read reaches the device exactly once, whichever of the two paths saw it,
 * and every notice comes after `queue-empty`.
 */
export class DeviceConnection {
  private draining = true;
  private readonly heldBack: Array<MessageFrame | DeviceNotice> = [];
  private readonly sentFromQueue = new Set<string>();

  constructor(
    readonly deviceRowId: string,
    /** The account the device belongs to, so that all of an account's sockets can be closed at once. */
    readonly accountId: string,
    readonly socket: FrameSocket,
    /** Order in which the handshakes completed: of two sockets of one device, the higher one is kept. */
    readonly sequence: number,
  ) {}

  get isOpen(): boolean {
    return this.socket.readyState === OPEN;
  }

  send(frame: ServerFrame): void {
    if (this.isOpen) this.socket.send(JSON.stringify(frame));
  }

  /** A stored message read from the queue. */
  sendQueued(envelope: Envelope): void {
    this.sentFromQueue.add(envelope.id);
    this.send({ type: ServerFrameType.Message, envelope });
  }

  /** A message stored after this connection was registered. */
  deliverLive(envelope: Envelope): void {
    this.sendOrHold({ type: ServerFrameType.Message, envelope });
  }

  deliverNotice(notice: DeviceNotice): void {
    this.sendOrHold(notice);
  }

  /**
   * Ends the queue: `queue-empty`, then `connectNotice` if any, then the
   * held-back frames, less messages already sent and less held notices of
   * the kind `connectNotice` supersedes with fresher content.
   */
  finishQueue(connectNotice?: DeviceNotice): void {
    this.send({ type: ServerFrameType.QueueEmpty });
    if (connectNotice) this.send(connectNotice);
    this.draining = false;
    for (const frame of this.heldBack.splice(0)) {
      if (frame.type === ServerFrameType.Message ? this.sentFromQueue.has(frame.envelope.id) : frame.type === connectNotice?.type) continue;
      this.send(frame);
    }
    this.sentFromQueue.clear();
  }

  private sendOrHold(frame: MessageFrame | DeviceNotice): void {
    if (this.draining) this.heldBack.push(frame);
    else this.send(frame);
  }

  close(code: number, reason: string): void {
    this.socket.close(code, reason);
  }
}
