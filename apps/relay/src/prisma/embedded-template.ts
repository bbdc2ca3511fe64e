// A PGlite data directory as initdb leaves it, made once at build time
// (`npm run build` runs tools/pglite-template). A new embedded database is
// unpacked from it instead of running initdb in WebAssembly, which was most of
// a fresh start (issue #9, cold start: about 4.6 s of CPU against 1.3 s to
// unpack, on a 2-core machine). It holds no data of ours: migrations still run
// at start-up. Without a template (a relay run from src/, or not built) a new
// database runs initdb as before.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';

/** dist/pglite-template/ beside the built relay (from dist/prisma/ or dist/tools/ alike). */
const TEMPLATE_DIR = fileURLToPath(new URL('../pglite-template/', import.meta.url));

/** The template file for the installed PGlite: a template from another version is never used. */
async function templatePath(): Promise<string> {
  const entry = fileURLToPath(import.meta.resolve('@electric-sql/pglite'));
  const manifest = JSON.parse(await readFile(join(dirname(entry), '..', 'package.json'), 'utf8')) as { version: string };
  return join(TEMPLATE_DIR, `pglite-${manifest.version}.tar.gz`);
}

/** The template for the installed PGlite, or null when none was built. */
export async function readEmbeddedTemplate(): Promise<Blob | null> {
  try {
    return new Blob([await readFile(await templatePath())]);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}

/** Runs initdb in memory and saves the result as the template, unless it exists; returns its path. */
export async function writeEmbeddedTemplate(): Promise<{ path: string; written: boolean }> {
  const path = await templatePath();
  if (await readEmbeddedTemplate()) return { path, written: false };
  const db = await PGlite.create('memory://');
  try {
    const dump = await db.dumpDataDir('gzip');
    await mkdir(dirname(path), { recursive: true });
    // Written whole, then renamed: a half-written template must never be found.
    await writeFile(`${path}.partial`, Buffer.from(await dump.arrayBuffer()));
    await rename(`${path}.partial`, path);
  } finally {
    await db.close();
  }
  return { path, written: true };
}
