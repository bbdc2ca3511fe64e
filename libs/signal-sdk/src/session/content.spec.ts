import {
  CONTENT_VERSION,
  UNSEQUENCED_CONTENT_VERSION,
  ContentFormatError,
  ContentKind,
  MAX_BODY_BYTES,
  MAX_RECEIPT_TIMESTAMPS,
  PADDING_BLOCK,
  ReceiptType,
  SESSION_RESET_REQUEST_BODY_BYTES,
  TypingAction,
  decodeContent,
  decodeText,
  encodeContent,
  encodeReceipt,
  encodeSessionResetRequest,
  encodeSyncCopy,
  encodeTyping,
  paddedContentLength,
  receiptOf,
  sessionResetSince,
  syncCopyOf,
  typingOf,
} from './content.js';
import { encodeGroupMessageBody } from '../groups/group-wire.js';

const text = (s: string) => new TextEncoder().encode(s);

describe('content encoding', () => {
  it('round-trips kind, timestamp and body', () => {
    const content = { kind: ContentKind.Text, timestamp: 1_764_000_000_123, body: text('héllo ✓') };
    const decoded = decodeContent(encodeContent(content));
    expect(decoded.kind).toBe(ContentKind.Text);
    expect(decoded.timestamp).toBe(1_764_000_000_123);
    expect(decodeText(decoded.body)).toBe('héllo ✓');
  });

  it('writes the documented layout', () => {
    const bytes = encodeContent({ kind: ContentKind.Bytes, timestamp: 0x0102030405, body: new Uint8Array([9, 8, 7]) });
    expect([...bytes.subarray(0, 18)]).toEqual([UNSEQUENCED_CONTENT_VERSION, 2, 0, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 3, 9, 8, 7, 0x80]);
    expect(bytes.subarray(18).every((b) => b === 0)).toBe(true);
  });

  it.each([
    [0, 160],
    [1, 160],
    [145, 160],
    [146, 320],
    [305, 320],
    [306, 480],
    [MAX_BODY_BYTES, 61_600],
  ])('pads a %i-byte body to %i bytes', (bodyLength, padded) => {
    const bytes = encodeContent({ kind: ContentKind.Bytes, timestamp: 1, body: new Uint8Array(bodyLength).fill(0xaa) });
    expect(bytes.length).toBe(padded);
    expect(paddedContentLength(bodyLength)).toBe(padded);
    expect(bytes.length % PADDING_BLOCK).toBe(0);
    expect(decodeContent(bytes).body.length).toBe(bodyLength);
  });

  it('hides the difference between short bodies', () => {
    const a = encodeContent({ kind: ContentKind.Text, timestamp: 1, body: text('ok') });
    const b = encodeContent({ kind: ContentKind.Text, timestamp: 1, body: text('a longer sentence of a hundred chars'.repeat(3)) });
    expect(a.length).toBe(b.length);
  });

  it('refuses to encode a body over the maximum or a bad timestamp', () => {
    expect(() => encodeContent({ kind: ContentKind.Bytes, timestamp: 1, body: new Uint8Array(MAX_BODY_BYTES + 1) })).toThrow(ContentFormatError);
    expect(() => encodeContent({ kind: ContentKind.Bytes, timestamp: -1, body: new Uint8Array(1) })).toThrow(ContentFormatError);
    expect(() => encodeContent({ kind: ContentKind.Bytes, timestamp: 1.5, body: new Uint8Array(1) })).toThrow(ContentFormatError);
  });

  describe('strict parsing', () => {
    const valid = () => encodeContent({ kind: ContentKind.Text, timestamp: 42, body: text('hello') });
    const mutate = (f: (b: Uint8Array) => Uint8Array) => f(valid());

    it.each<[string, Uint8Array]>([
      ['empty', new Uint8Array(0)],
      ['not a multiple of the block', mutate((b) => b.subarray(0, 159))],
      ['an extra block of zeros', mutate((b) => Uint8Array.from([...b, ...new Uint8Array(160)]))],
      ['unknown version', mutate((b) => ((b[0] = 3), b))],
      ['version 2 with a version 1 header', mutate((b) => ((b[0] = CONTENT_VERSION), b))],
      ['version zero', mutate((b) => ((b[0] = 0), b))],
      ['unknown kind', mutate((b) => ((b[1] = 7), b))],
      ['kind zero', mutate((b) => ((b[1] = 0), b))],
      ['timestamp beyond 2^53', mutate((b) => ((b[2] = 0xff), b))],
      ['length longer than the content', mutate((b) => ((b[13] = 200), b))],
      ['length shorter than written', mutate((b) => ((b[13] = 4), b))],
      ['missing marker', mutate((b) => ((b[14 + 5] = 0), b))],
      ['non-zero padding', mutate((b) => ((b[159] = 1), b))],
    ])('rejects %s', (_name, bytes) => {
      expect(() => decodeContent(bytes)).toThrow(ContentFormatError);
    });

    it('rejects a text body that is not UTF-8', () => {
      const bytes = encodeContent({ kind: ContentKind.Text, timestamp: 1, body: new Uint8Array([0xc3, 0x28]) });
      expect(() => decodeText(decodeContent(bytes).body)).toThrow(ContentFormatError);
    });
  });

  describe('sequence (version 2)', () => {
    const sequence = { stream: 0x0a0b0c0d, number: 0x01020304 };

    it('writes the documented layout: version 2, then stream and number before the body length', () => {
      const bytes = encodeContent({ kind: ContentKind.Text, timestamp: 0x0102030405, body: text('hi'), sequence });
      expect([...bytes.subarray(0, 25)]).toEqual([
        CONTENT_VERSION, 1, 0, 0, 0, 1, 2, 3, 4, 5, 0x0a, 0x0b, 0x0c, 0x0d, 1, 2, 3, 4, 0, 0, 0, 2, ...text('hi'), 0x80,
      ]);
      expect(bytes.subarray(25).every((b) => b === 0)).toBe(true);
      expect(bytes.length).toBe(160);
    });

    it('round-trips the sequence of text and bytes; a record without one is written as version 1 and decodes without it', () => {
      const decoded = decodeContent(encodeContent({ kind: ContentKind.Bytes, timestamp: 9, body: new Uint8Array([1, 2]), sequence }));
      expect(decoded).toEqual({ kind: ContentKind.Bytes, timestamp: 9, body: new Uint8Array([1, 2]), sequence });
      const plain = encodeContent({ kind: ContentKind.Text, timestamp: 9, body: text('x') });
      expect(plain[0]).toBe(UNSEQUENCED_CONTENT_VERSION);
      expect(decodeContent(plain)).not.toHaveProperty('sequence');
    });

    it('takes the extra header bytes out of the padding: a largest message and its sync copy still pad to 61,600 bytes', () => {
      const largest = { kind: ContentKind.Bytes, timestamp: 1, body: new Uint8Array(MAX_BODY_BYTES).fill(1), sequence };
      expect(encodeContent(largest).length).toBe(61_600);
      expect(paddedContentLength(MAX_BODY_BYTES, true)).toBe(61_600);
      const copy = encodeSyncCopy('a'.repeat(32), largest);
      expect(copy.length).toBe(61_600);
      expect(decodeContent(copy).sequence).toEqual(sequence);
    });

    it('gives a sync copy the stream and number of the message it copies', () => {
      const copy = syncCopyOf(decodeContent(encodeSyncCopy('bob', { kind: ContentKind.Text, timestamp: 5, body: text('hey'), sequence })));
      expect(copy.message.sequence).toEqual(sequence);
      expect(copy.message.timestamp).toBe(5);
    });

    it('refuses to encode a sequence on a kind that has none, or a stream or number out of range', () => {
      expect(() => encodeTyping(1, true)).not.toThrow();
      expect(() => encodeContent({ kind: ContentKind.Typing, timestamp: 1, body: Uint8Array.of(1), sequence })).toThrow(ContentFormatError);
      expect(() => encodeContent({ kind: ContentKind.Receipt, timestamp: 1, body: new Uint8Array(11), sequence })).toThrow(ContentFormatError);
      for (const bad of [{ stream: 0, number: 1 }, { stream: 1, number: 0 }, { stream: 2 ** 32, number: 1 }, { stream: 1, number: 1.5 }]) {
        expect(() => encodeContent({ kind: ContentKind.Text, timestamp: 1, body: text('x'), sequence: bad })).toThrow(ContentFormatError);
      }
    });

    const handBuiltV2 = (kind: number, body: Uint8Array, stream: number, number: number) => {
      const bytes = new Uint8Array(paddedContentLength(body.length, true));
      const view = new DataView(bytes.buffer);
      view.setUint8(0, CONTENT_VERSION);
      view.setUint8(1, kind);
      view.setBigUint64(2, 1n);
      view.setUint32(10, stream);
      view.setUint32(14, number);
      view.setUint32(18, body.length);
      bytes.set(body, 22);
      bytes[22 + body.length] = 0x80;
      return bytes;
    };

    it('round-trips the sequence of a group message (kind 10, numbered in its sender device\'s sequence to the group), hand-built form included', () => {
      const body = encodeGroupMessageBody({ groupId: new Uint8Array(32).fill(7), innerKind: 1, body: text('to the group') });
      const decoded = decodeContent(encodeContent({ kind: ContentKind.GroupMessage, timestamp: 3, body, sequence }));
      expect(decoded).toEqual({ kind: ContentKind.GroupMessage, timestamp: 3, body, sequence });
      expect(decodeContent(handBuiltV2(ContentKind.GroupMessage, body, 7, 8)).sequence).toEqual({ stream: 7, number: 8 });
      // A largest group message still fits the largest record's padded length.
      const largest = encodeGroupMessageBody({ groupId: new Uint8Array(32), innerKind: 2, body: new Uint8Array(MAX_BODY_BYTES) });
      expect(encodeContent({ kind: ContentKind.GroupMessage, timestamp: 1, body: largest, sequence }).length).toBe(61_600);
    });

    it('accepts the hand-built form of a sequenced text', () => {
      expect(decodeContent(handBuiltV2(ContentKind.Text, text('ok'), 7, 8)).sequence).toEqual({ stream: 7, number: 8 });
    });

    it.each<[string, Uint8Array]>([
      ['stream 0', handBuiltV2(ContentKind.Text, text('ok'), 0, 8)],
      ['number 0', handBuiltV2(ContentKind.Text, text('ok'), 7, 0)],
      ['a session reset request', handBuiltV2(ContentKind.SessionResetRequest, new Uint8Array(8), 7, 8)],
      ['a receipt', handBuiltV2(ContentKind.Receipt, Uint8Array.from([1, 0, 1, ...new Uint8Array(8)]), 7, 8)],
      ['a typing record', handBuiltV2(ContentKind.Typing, Uint8Array.of(1), 7, 8)],
      ['a profile key', handBuiltV2(ContentKind.ProfileKey, new Uint8Array(32), 7, 8)],
      ['a group update', handBuiltV2(ContentKind.GroupUpdate, new Uint8Array(50), 7, 8)],
      ['a sender key', handBuiltV2(ContentKind.SenderKeyDistribution, new Uint8Array(40), 7, 8)],
    ])('rejects a version 2 record with %s', (_name, bytes) => {
      expect(() => decodeContent(bytes)).toThrow(ContentFormatError);
    });
  });

  describe('session reset request (kind 3)', () => {
    const since = 1_764_000_000_456;

    it('writes the documented layout: an 8-byte body holding since', () => {
      const bytes = encodeSessionResetRequest(0x0a0b0c0d0e, since);
      const sinceBytes = [...Buffer.from(since.toString(16).padStart(16, '0'), 'hex')];
      expect([...bytes.subarray(0, 23)]).toEqual([UNSEQUENCED_CONTENT_VERSION, 3, 0, 0, 0, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0, 0, 0, 8, ...sinceBytes, 0x80]);
      expect(bytes.length).toBe(PADDING_BLOCK);
      expect(bytes.subarray(23).every((b) => b === 0)).toBe(true);
    });

    it('round-trips since, up to 2^53 - 1', () => {
      for (const value of [0, since, Number.MAX_SAFE_INTEGER]) {
        const content = decodeContent(encodeSessionResetRequest(7, value));
        expect(content.kind).toBe(ContentKind.SessionResetRequest);
        expect(content.timestamp).toBe(7);
        expect(sessionResetSince(content.body)).toBe(value);
      }
    });

    const withBody = (body: Uint8Array) => {
      // Hand-built, as a peer with another encoder could send it: encodeContent refuses these.
      const bytes = new Uint8Array(paddedContentLength(body.length));
      const view = new DataView(bytes.buffer);
      view.setUint8(0, UNSEQUENCED_CONTENT_VERSION);
      view.setUint8(1, ContentKind.SessionResetRequest);
      view.setBigUint64(2, 1n);
      view.setUint32(10, body.length);
      bytes.set(body, 14);
      bytes[14 + body.length] = 0x80;
      return bytes;
    };

    it.each<[string, Uint8Array]>([
      ['an empty body', new Uint8Array(0)],
      ['a 7-byte body', new Uint8Array(7)],
      ['a 9-byte body', new Uint8Array(9)],
      ['since beyond 2^53', new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])],
    ])('rejects %s', (_name, body) => {
      expect(() => decodeContent(withBody(body))).toThrow(ContentFormatError);
      expect(() => encodeContent({ kind: ContentKind.SessionResetRequest, timestamp: 1, body })).toThrow(ContentFormatError);
    });

    it('accepts the hand-built form of a valid body, and refuses a since that is not a safe integer when encoding', () => {
      const body = new Uint8Array(SESSION_RESET_REQUEST_BODY_BYTES);
      new DataView(body.buffer).setBigUint64(0, BigInt(since));
      expect(sessionResetSince(decodeContent(withBody(body)).body)).toBe(since);
      expect(() => encodeSessionResetRequest(1, -1)).toThrow(ContentFormatError);
      expect(() => encodeSessionResetRequest(1, 2 ** 53)).toThrow(ContentFormatError);
      expect(() => encodeSessionResetRequest(1, 1.5)).toThrow(ContentFormatError);
    });
  });
  /** A record with this kind and body as a peer with another encoder could send it: encodeContent refuses malformed bodies. */
  const handBuilt = (kind: number, body: Uint8Array, timestamp = 1n) => {
    const bytes = new Uint8Array(paddedContentLength(body.length));
    const view = new DataView(bytes.buffer);
    view.setUint8(0, UNSEQUENCED_CONTENT_VERSION);
    view.setUint8(1, kind);
    view.setBigUint64(2, timestamp);
    view.setUint32(10, body.length);
    bytes.set(body, 14);
    bytes[14 + body.length] = 0x80;
    return bytes;
  };
  const u64 = (value: bigint) => {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, value);
    return [...bytes];
  };

  describe('sync copy (kind 4)', () => {
    const original = { kind: ContentKind.Text, timestamp: 1_764_000_000_789, body: text('see you at 8') };

    it('writes the documented layout: destination length, destination, inner kind, inner body', () => {
      const bytes = encodeSyncCopy('bob', original);
      const inner = [...text('see you at 8')];
      const body = [3, ...text('bob'), ContentKind.Text, ...inner];
      expect([...bytes.subarray(0, 14)]).toEqual([UNSEQUENCED_CONTENT_VERSION, 4, ...u64(BigInt(original.timestamp)), 0, 0, 0, body.length]);
      expect([...bytes.subarray(14, 14 + body.length + 1)]).toEqual([...body, 0x80]);
      expect(bytes.length).toBe(PADDING_BLOCK);
    });

    it('round-trips destination, inner kind, body and the original timestamp', () => {
      const copy = syncCopyOf(decodeContent(encodeSyncCopy('bob.smith_2', original)));
      expect(copy.destination).toBe('bob.smith_2');
      expect(copy.message.kind).toBe(ContentKind.Text);
      expect(copy.message.timestamp).toBe(original.timestamp);
      expect(decodeText(copy.message.body)).toBe('see you at 8');

      const bytes = { kind: ContentKind.Bytes, timestamp: 5, body: new Uint8Array([0, 255, 7]) };
      const copyOfBytes = syncCopyOf(decodeContent(encodeSyncCopy('bob', bytes)));
      expect(copyOfBytes.message).toEqual(bytes);
    });

    it('pads a copy of a largest message to the length of the message itself', () => {
      const largest = { kind: ContentKind.Bytes, timestamp: 1, body: new Uint8Array(MAX_BODY_BYTES).fill(1) };
      const copy = encodeSyncCopy('a'.repeat(32), largest);
      expect(copy.length).toBe(encodeContent(largest).length);
      expect(syncCopyOf(decodeContent(copy)).message.body.length).toBe(MAX_BODY_BYTES);
    });

    it('refuses to encode another inner kind, a non-canonical destination or a body over the maximum', () => {
      expect(() => encodeSyncCopy('bob', { kind: ContentKind.Typing, timestamp: 1, body: new Uint8Array([1]) })).toThrow(ContentFormatError);
      expect(() => encodeSyncCopy('Bob', original)).toThrow(ContentFormatError);
      expect(() => encodeSyncCopy('bo', original)).toThrow(ContentFormatError);
      expect(() => encodeSyncCopy('bob', { ...original, body: new Uint8Array(MAX_BODY_BYTES + 1) })).toThrow(ContentFormatError);
    });

    it.each<[string, number[]]>([
      ['an empty body', []],
      ['a destination longer than the body', [10, ...text('bob'), 1]],
      ['no inner kind', [3, ...text('bob')]],
      ['an empty destination', [0, 1, ...text('x')]],
      ['an upper-case destination', [3, ...text('Bob'), 1, ...text('x')]],
      ['a destination that is not UTF-8', [3, 0x62, 0xc3, 0x28, 1]],
      ['inner kind 3 (a control record)', [3, ...text('bob'), 3, ...u64(1n)]],
      ['inner kind 4 (a copy of a copy)', [3, ...text('bob'), 4, 3, ...text('eve'), 1]],
      ['inner kind 0', [3, ...text('bob'), 0]],
      ['an inner text that is not UTF-8', [3, ...text('bob'), 1, 0xc3, 0x28]],
    ])('rejects %s', (_name, body) => {
      expect(() => decodeContent(handBuilt(ContentKind.SyncCopy, Uint8Array.from(body)))).toThrow(ContentFormatError);
    });

    it('rejects an inner body over the maximum', () => {
      const body = Uint8Array.from([3, ...text('bob'), 2, ...new Uint8Array(MAX_BODY_BYTES + 1)]);
      expect(() => decodeContent(handBuilt(ContentKind.SyncCopy, body))).toThrow(ContentFormatError);
    });

    it('accepts an empty inner body', () => {
      const copy = syncCopyOf(decodeContent(handBuilt(ContentKind.SyncCopy, Uint8Array.from([3, ...text('bob'), 2]))));
      expect(copy.message.body.length).toBe(0);
    });
  });

  describe('receipt (kind 5)', () => {
    it('writes the documented layout: type, u16 count, u64 timestamps', () => {
      const bytes = encodeReceipt(9, { type: ReceiptType.Read, timestamps: [1, 0x0102030405] });
      const body = [2, 0, 2, ...u64(1n), ...u64(0x0102030405n)];
      expect([...bytes.subarray(0, 14 + body.length + 1)]).toEqual([UNSEQUENCED_CONTENT_VERSION, 5, ...u64(9n), 0, 0, 0, body.length, ...body, 0x80]);
    });

    it('round-trips the type and the timestamps in order, 1 to 100 of them', () => {
      const many = Array.from({ length: MAX_RECEIPT_TIMESTAMPS }, (_, i) => Number.MAX_SAFE_INTEGER - i);
      expect(receiptOf(decodeContent(encodeReceipt(3, { type: ReceiptType.Delivery, timestamps: many })))).toEqual({
        type: ReceiptType.Delivery,
        timestamps: many,
      });
      expect(receiptOf(decodeContent(encodeReceipt(3, { type: ReceiptType.Read, timestamps: [0] })))).toEqual({ type: ReceiptType.Read, timestamps: [0] });
    });

    it('refuses to encode no timestamps, more than 100, a bad one or an unknown type', () => {
      expect(() => encodeReceipt(1, { type: ReceiptType.Read, timestamps: [] })).toThrow(ContentFormatError);
      expect(() => encodeReceipt(1, { type: ReceiptType.Read, timestamps: new Array<number>(101).fill(1) })).toThrow(ContentFormatError);
      expect(() => encodeReceipt(1, { type: ReceiptType.Read, timestamps: [-1] })).toThrow(ContentFormatError);
      expect(() => encodeReceipt(1, { type: ReceiptType.Read, timestamps: [1.5] })).toThrow(ContentFormatError);
      expect(() => encodeReceipt(1, { type: 3 as ReceiptType, timestamps: [1] })).toThrow(ContentFormatError);
    });

    it.each<[string, number[]]>([
      ['an empty body', []],
      ['type 0', [0, 0, 1, ...u64(1n)]],
      ['type 3', [3, 0, 1, ...u64(1n)]],
      ['count 0', [1, 0, 0]],
      ['count 101', [1, 0, 101, ...new Array<number>(8 * 101).fill(0)]],
      ['fewer timestamps than the count', [1, 0, 2, ...u64(1n)]],
      ['more timestamps than the count', [1, 0, 1, ...u64(1n), ...u64(2n)]],
      ['a trailing byte', [1, 0, 1, ...u64(1n), 0]],
      ['a timestamp beyond 2^53', [1, 0, 1, ...u64(2n ** 53n)]],
    ])('rejects %s', (_name, body) => {
      expect(() => decodeContent(handBuilt(ContentKind.Receipt, Uint8Array.from(body)))).toThrow(ContentFormatError);
    });
  });

  describe('typing (kind 6)', () => {
    it('writes the documented layout and round-trips started and stopped', () => {
      const bytes = encodeTyping(0x0a, true);
      expect([...bytes.subarray(0, 16)]).toEqual([UNSEQUENCED_CONTENT_VERSION, 6, ...u64(0x0an), 0, 0, 0, 1, 1, 0x80]);
      expect(bytes.length).toBe(PADDING_BLOCK);
      expect(typingOf(decodeContent(bytes))).toBe(TypingAction.Started);
      expect(typingOf(decodeContent(encodeTyping(1, false)))).toBe(TypingAction.Stopped);
      expect(decodeContent(bytes).timestamp).toBe(0x0a);
    });

    it.each<[string, number[]]>([
      ['an empty body', []],
      ['action 0', [0]],
      ['action 3', [3]],
      ['two bytes', [1, 0]],
    ])('rejects %s', (_name, body) => {
      expect(() => decodeContent(handBuilt(ContentKind.Typing, Uint8Array.from(body)))).toThrow(ContentFormatError);
    });
  });

  it('rejects a body over the maximum for every kind but the sync copy', () => {
    for (const kind of [ContentKind.Text, ContentKind.Bytes, ContentKind.Receipt, ContentKind.Typing]) {
      expect(() => decodeContent(handBuilt(kind, new Uint8Array(MAX_BODY_BYTES + 1)))).toThrow(ContentFormatError);
    }
  });

  it('the kind readers refuse a record of another kind', () => {
    const typing = decodeContent(encodeTyping(1, true));
    expect(() => receiptOf(typing)).toThrow(ContentFormatError);
    expect(() => syncCopyOf(typing)).toThrow(ContentFormatError);
    expect(() => typingOf(decodeContent(encodeReceipt(1, { type: ReceiptType.Read, timestamps: [1] })))).toThrow(ContentFormatError);
  });
});
