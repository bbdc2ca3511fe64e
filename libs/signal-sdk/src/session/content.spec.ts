import {
  CONTENT_VERSION,
  ContentFormatError,
  ContentKind,
  MAX_BODY_BYTES,
  PADDING_BLOCK,
  decodeContent,
  decodeText,
  encodeContent,
  paddedContentLength,
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
      ['unknown kind', mutate((b) => ((b[1] = 3), b))],
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
});
