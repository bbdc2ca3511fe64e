/**
 * The attacker's search of a compromised relay: every secret a client held,
 * in every form an accident could have stored or logged it, looked for in
 * every cell of a database dump and every line of the relay's output.
 *
 * Forms of a secret's bytes: the bytes themselves (as latin1 text, for a
 * database's own files), lower- and upper-case hex (Postgres prints bytea
 * as `\x` + hex), and base64 and base64url at each of the three byte offsets
 * the secret could start at inside a longer encoded buffer (only the groups
 * of 4 characters made of the secret's bytes alone: what would show whatever
 * came before and after it). A text secret is also looked for as it is, and
 * as the forms of its UTF-8 and UTF-16LE bytes.
 *
 * Many secrets, large dumps: a rolling hash of the first ANCHOR characters of
 * each form finds candidates in one pass over a text, each then compared in full.
 */

/** Every form is at least this long: shorter ones would match by chance. */
export const ANCHOR = 16;

export interface SecretForm {
  /** `hex`, `HEX`, `base64@1`, `utf16le base64url@2`, `text`... */
  encoding: string;
  text: string;
}

export interface Secret {
  /** What it is, for the report (`alice identity private key`): never the value. */
  label: string;
  forms: SecretForm[];
}

export interface Finding {
  secret: string;
  encoding: string;
  /** `table.column row 3`, `log line 120`. */
  where: string;
}

/** The forms of bytes: raw, hex in both cases, base64 and base64url at byte offsets 0, 1 and 2. */
export function byteForms(bytes: Uint8Array, prefix = ''): SecretForm[] {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const hex = buffer.toString('hex');
  const forms: SecretForm[] = [
    { encoding: `${prefix}raw`, text: buffer.toString('latin1') },
    { encoding: `${prefix}hex`, text: hex },
    { encoding: `${prefix}HEX`, text: hex.toUpperCase() },
  ];
  for (let offset = 0; offset < 3; offset++) {
    const shifted = Buffer.concat([Buffer.alloc(offset), buffer]).toString('base64');
    const core = shifted.slice(offset === 0 ? 0 : 4, Math.floor((offset + buffer.length) / 3) * 4);
    forms.push({ encoding: `${prefix}base64@${offset}`, text: core });
    forms.push({ encoding: `${prefix}base64url@${offset}`, text: core.replaceAll('+', '-').replaceAll('/', '_') });
  }
  return forms;
}

export function bytesSecret(label: string, bytes: Uint8Array): Secret {
  return { label, forms: byteForms(bytes) };
}

export function textSecret(label: string, text: string): Secret {
  return {
    label,
    forms: [
      { encoding: 'text', text },
      ...byteForms(Buffer.from(text, 'utf8'), 'utf8 '),
      ...byteForms(Buffer.from(text, 'utf16le'), 'utf16le '),
    ],
  };
}

const BASE = 0x01000193;
// A module binding, not a global look-up per character: Jest runs tests in a
// vm context, whose global object answers every look-up through an interceptor.
const imul = Math.imul;

/** BASE^(ANCHOR-1) mod 2^32: what the character leaving the window weighs. */
const OUTGOING_WEIGHT = (() => {
  let weight = 1;
  for (let i = 1; i < ANCHOR; i++) weight = imul(weight, BASE) >>> 0;
  return weight;
})();

function anchorHash(text: string, start: number): number {
  let hash = 0;
  for (let i = start; i < start + ANCHOR; i++) hash = (imul(hash, BASE) + text.charCodeAt(i)) >>> 0;
  return hash;
}

interface Candidate {
  secret: Secret;
  form: SecretForm;
}

/** Bits of the prefilter: a set bit says some form's anchor may have this hash's low bits. */
const FILTER_BITS = 22;
const FILTER_MASK = (1 << FILTER_BITS) - 1;

export class SecretScanner {
  private readonly byAnchor = new Map<number, Candidate[]>();
  /** Most windows of a text match no anchor: this answers that without a Map look-up. */
  private readonly filter = new Uint8Array((1 << FILTER_BITS) / 8);
  readonly formCount: number;

  constructor(readonly secrets: readonly Secret[]) {
    let count = 0;
    for (const secret of secrets) {
      for (const form of secret.forms) {
        if (form.text.length < ANCHOR) throw new Error(`${secret.label} (${form.encoding}) is shorter than ${ANCHOR} characters`);
        const hash = anchorHash(form.text, 0);
        this.filter[(hash & FILTER_MASK) >>> 3] = this.filter[(hash & FILTER_MASK) >>> 3]! | (1 << (hash & 7));
        const candidates = this.byAnchor.get(hash);
        if (candidates) candidates.push({ secret, form });
        else this.byAnchor.set(hash, [{ secret, form }]);
        count++;
      }
    }
    this.formCount = count;
  }

  /** Every secret form `text` contains, each once per place it starts. */
  find(text: string): Array<{ secret: Secret; form: SecretForm }> {
    const found: Array<{ secret: Secret; form: SecretForm }> = [];
    if (text.length < ANCHOR) return found;
    let hash = anchorHash(text, 0);
    for (let start = 0; ; start++) {
      const candidates = this.filter[(hash & FILTER_MASK) >>> 3]! & (1 << (hash & 7)) ? this.byAnchor.get(hash) : undefined;
      if (candidates) for (const candidate of candidates) if (text.startsWith(candidate.form.text, start)) found.push(candidate);
      const next = start + ANCHOR;
      if (next >= text.length) break;
      hash = (imul((hash - imul(text.charCodeAt(start), OUTGOING_WEIGHT)) >>> 0, BASE) + text.charCodeAt(next)) >>> 0;
    }
    return found;
  }

  /** Findings in every cell of every table. */
  scanTables(tables: readonly DumpTable[]): Finding[] {
    const findings: Finding[] = [];
    for (const table of tables) {
      table.rows.forEach((row, rowIndex) =>
        row.forEach((cell, column) => {
          for (const { secret, form } of this.find(cell)) {
            findings.push({ secret: secret.label, encoding: form.encoding, where: `${table.name}.${table.columns[column]} row ${rowIndex}` });
          }
        }),
      );
    }
    return findings;
  }

  /** Findings in files, each read byte for byte (latin1). */
  scanFiles(files: ReadonlyArray<{ path: string; bytes: Buffer }>): Finding[] {
    const findings: Finding[] = [];
    for (const file of files) {
      for (const { secret, form } of this.find(file.bytes.toString('latin1'))) findings.push({ secret: secret.label, encoding: form.encoding, where: `file ${file.path}` });
    }
    return findings;
  }

  /** Findings in every line of a log. */
  scanLog(log: string): Finding[] {
    const findings: Finding[] = [];
    log.split('\n').forEach((line, index) => {
      for (const { secret, form } of this.find(line)) findings.push({ secret: secret.label, encoding: form.encoding, where: `log line ${index + 1}` });
    });
    return findings;
  }
}

/** A table of a dump, every value as text (the shape of @chat/relay-harness's `databaseTables()`). */
export interface DumpTable {
  name: string;
  columns: string[];
  rows: string[][];
}
