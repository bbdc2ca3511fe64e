// Part of `npm run build`: saves the embedded database's initdb template for
// the installed PGlite (see prisma/embedded-template.ts), once per version.
import { writeEmbeddedTemplate } from '../prisma/embedded-template.js';

const { path, written } = await writeEmbeddedTemplate();
if (written) console.log(`embedded database template: ${path}`);
