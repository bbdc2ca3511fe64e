-- CreateTable
CREATE TABLE "backups" (
    "account_id" UUID NOT NULL,
    "blob" BYTEA NOT NULL,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "backups_pkey" PRIMARY KEY ("account_id")
);

-- AddForeignKey
ALTER TABLE "backups" ADD CONSTRAINT "backups_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;
