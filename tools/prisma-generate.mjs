// Generates the relay's Prisma client after `npm install`.
// Prisma 7's CLI insists on locating its schema engine even for `generate`,
// which never runs it; where the engine binary cannot be downloaded (offline
// installs, this project's CI) any existing file satisfies the check.
import { spawnSync } from 'node:child_process';

const env = { ...process.env };
env.PRISMA_SCHEMA_ENGINE_BINARY ??= process.execPath;
const result = spawnSync(process.execPath, ['node_modules/prisma/build/index.js', 'generate'], {
  stdio: 'inherit',
  env,
});
process.exit(result.status ?? 1);
