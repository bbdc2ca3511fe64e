import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from '@jest/globals';

/**
 * docs/security.md's table of the adversarial suite ("The adversarial suite:
 * attack and test") and the specs of this folder must agree: each test here
 * is a row, and each row is a test of the spec its section names. A title
 * with a parameter (`%s`, `${…}`) is written `[…]` in the table.
 */
const HERE = dirname(fileURLToPath(import.meta.url));
const SECURITY_MD = join(HERE, '../../../../docs/security.md');
const THIS_FILE = 'attack-table.e2e-spec.ts';
const SECTION = '## The adversarial suite: attack and test';

/** Titles of `it(...)`, `it.each(...)(...)` and the authorization matrix's `row([...], ...)`, in a spec's source. */
function titlesOf(source: string): string[] {
  const direct = /\b(?:it|row)\(\s*(?:\[[^\]]*\],\s*)?(['"`])(.+?)(?<!\\)\1\s*,/g;
  const each = /\)\(\s*(['"`])(.+?)(?<!\\)\1\s*,\s*(?:async|\()/g;
  const found: string[] = [];
  for (const pattern of [direct, each]) {
    for (const match of source.matchAll(pattern)) found.push(normalise(match[2]!.replace(/\\(['"`])/g, '$1')));
  }
  return found;
}

/** A parameter of a title, whichever way it is spelt, becomes `[…]`. */
const normalise = (title: string) => title.replace(/%s|\$\{[^}]*\}/g, '[…]').trim();

/** The table's rows: spec file name to the titles its section cites. */
function tableOf(markdown: string): Map<string, string[]> {
  const start = markdown.indexOf(SECTION);
  if (start < 0) throw new Error(`docs/security.md has no "${SECTION}"`);
  const end = markdown.indexOf('\n## ', start + SECTION.length);
  const section = markdown.slice(start, end < 0 ? undefined : end);
  const rows = new Map<string, string[]>();
  let file: string | undefined;
  for (const line of section.split('\n')) {
    const path = /^`apps\/relay\/test\/adversarial\/([\w.-]+\.e2e-spec\.ts)`$/.exec(line.trim());
    if (path) {
      file = path[1]!;
      rows.set(file, []);
      continue;
    }
    const cells = line.split(' | ');
    if (!file || !line.startsWith('| ') || cells.length !== 2 || /^\| (Attack|---)/.test(line)) continue;
    rows.get(file)!.push(normalise(cells[1]!.replace(/ \|$/, '')));
  }
  return rows;
}

describe('adversarial: the attack table of docs/security.md', () => {
  const specs = readdirSync(HERE).filter((name) => name.endsWith('.e2e-spec.ts') && name !== THIS_FILE);
  const table = tableOf(readFileSync(SECURITY_MD, 'utf8'));

  it('a test is added to the adversarial suite without naming its attack in docs/security.md: each test of each spec is a row of the table', () => {
    expect(specs.length).toBeGreaterThan(0);
    for (const spec of specs) {
      const titles = titlesOf(readFileSync(join(HERE, spec), 'utf8'));
      expect({ spec, found: titles.length > 0 }).toEqual({ spec, found: true });
      const missing = titles.filter((title) => !(table.get(spec) ?? []).includes(title));
      expect({ spec, missing }).toEqual({ spec, missing: [] });
    }
  });

  it('the table names a test that no spec has (renamed or removed): each row is a test of the spec its section names', () => {
    expect([...table.keys()].sort()).toEqual([...specs].sort());
    for (const [spec, rows] of table) {
      const titles = titlesOf(readFileSync(join(HERE, spec), 'utf8'));
      const unknown = rows.filter((row) => !titles.includes(row));
      expect({ spec, rows: rows.length > 0, unknown }).toEqual({ spec, rows: true, unknown: [] });
    }
  });
});
