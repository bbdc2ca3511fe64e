-- AlterTable
ALTER TABLE "accounts" ADD COLUMN     "credential_version" INTEGER NOT NULL DEFAULT 0;

-- AlterTable
-- Refresh tokens issued before this migration belong to version 0, the version
-- every existing account starts at; new rows always name their version.
ALTER TABLE "refresh_tokens" ADD COLUMN     "credential_version" INTEGER NOT NULL DEFAULT 0;
ALTER TABLE "refresh_tokens" ALTER COLUMN "credential_version" DROP DEFAULT;
