/**
 * The README's configuration table (section "Run the relay") names every
 * environment variable the relay reads, and nothing else: the variables are
 * the validated properties of `RelayEnv`, so a setting added there without a
 * README row (or a row left behind by a removed one) fails here.
 */
import { readFileSync } from 'node:fs';
import { getMetadataStorage } from 'class-validator';
import { RelayEnv } from './relay-env.js';

const README = new URL('../../../../README.md', import.meta.url);

/** Backticked names in the first column of the table under `## Run the relay`. */
function readmeVariables(markdown: string): string[] {
  const section = /^## Run the relay\n([\s\S]*?)(?=^## )/m.exec(markdown);
  if (!section) throw new Error('README.md has no "## Run the relay" section');
  const rows = section[1].split('\n').filter((line) => line.startsWith('| `'));
  return rows.flatMap((row) => [...row.split('|')[1].matchAll(/`([A-Z][A-Z0-9_]*)`/g)].map((match) => match[1]));
}

function relayEnvVariables(): string[] {
  const metadata = getMetadataStorage().getTargetValidationMetadatas(RelayEnv, '', true, false);
  return [...new Set(metadata.map((entry) => entry.propertyName))];
}

describe('README configuration table', () => {
  it('lists exactly the variables RelayEnv validates, once each', () => {
    const listed = readmeVariables(readFileSync(README, 'utf8'));
    const read = relayEnvVariables();
    // Guards against a parser that finds nothing on either side.
    expect(read).toEqual(expect.arrayContaining(['PORT', 'HOST', 'DATABASE_URL', 'DATA_DIR', 'JWT_SECRET']));
    expect(listed.filter((name, index) => listed.indexOf(name) !== index)).toEqual([]);
    expect([...listed].sort()).toEqual([...read].sort());
  });
});
