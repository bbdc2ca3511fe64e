import {
  CONTENT_VERSION,
  ContentFormatError,
  ContentKind,
  MAX_BODY_BYTES,
  PADDING_BLOCK,
  SESSION_RESET_REQUEST_BODY_BYTES,
  decodeContent,
  decodeText,
  encodeContent,
  encodeSessionResetRequest,
  paddedContentLength,
  sessionResetSince,
} from './content.js';

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
    expect([...bytes.subarray(0, 18)]).toEqual([CONTENT_VERSION, 2, 0, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 3, 9, 8, 7, 0x80]);
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
      ['unknown version', mutate((b) => ((b[0] = 2), b))],
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

  describe('session reset request (kind 3)', () => {
    const since = 1_764_000_000_456;

    it('writes the documented layout: an 8-byte body holding since', () => {
      const bytes = encodeSessionResetRequest(0x0a0b0c0d0e, since);
      const sinceBytes = [...Buffer.from(since.toString(16).padStart(16, '0'), 'hex')];
      expect([...bytes.subarray(0, 23)]).toEqual([CONTENT_VERSION, 3, 0, 0, 0, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0, 0, 0, 8, ...sinceBytes, 0x80]);
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
      view.setUint8(0, CONTENT_VERSION);
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
});
