import { defineConfig } from 'prisma/config';

// `prisma generate` needs no database. The relay applies migrations itself
// (tools/migrate); `prisma migrate deploy` reads the same folder where its
// schema engine is available.
export default defineConfig({
  schema: 'prisma/schema.prisma',
  migrations: { path: 'prisma/migrations' },
  datasource: { url: process.env.DATABASE_URL ?? 'postgresql://localhost/unused' },
});
