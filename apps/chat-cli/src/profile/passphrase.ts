// The passphrase that locks the local store. Asked on the terminal, masked;
// scripts and tests pass it in CHAT_CLI_PASSPHRASE instead.
import password from '@inquirer/password';
import { CliError } from '../errors.js';

export const PASSPHRASE_ENV = 'CHAT_CLI_PASSPHRASE';

export interface PassphraseOptions {
  /** Ask twice and refuse a mismatch (a new store). */
  confirm: boolean;
  env?: NodeJS.ProcessEnv;
  /** Where the prompt is written; stderr keeps stdout for a command's answer. */
  output?: NodeJS.WritableStream;
  input?: NodeJS.ReadableStream;
}

const nonEmpty = (value: string) => value.length > 0 || 'the passphrase cannot be empty';

/** @throws {CliError} an empty passphrase, two that differ, or a prompt cancelled with Ctrl-C. */
export async function readPassphrase(options: PassphraseOptions): Promise<string> {
  const fromEnv = (options.env ?? process.env)[PASSPHRASE_ENV];
  if (fromEnv !== undefined) {
    if (fromEnv.length === 0) throw new CliError(`${PASSPHRASE_ENV} is set but empty`);
    return fromEnv;
  }
  const context = { output: options.output ?? process.stderr, input: options.input ?? process.stdin };
  const theme = { prefix: '' };
  try {
    const first = await password({ message: 'Passphrase:', mask: '*', validate: nonEmpty, theme }, context);
    if (!options.confirm) return first;
    const second = await password({ message: 'Repeat passphrase:', mask: '*', validate: nonEmpty, theme }, context);
    if (first !== second) throw new CliError('the two passphrases differ; nothing was created');
    return first;
  } catch (error) {
    if (error instanceof CliError) throw error;
    if (error instanceof Error && error.name === 'ExitPromptError') throw new CliError('cancelled');
    throw error;
  }
}
