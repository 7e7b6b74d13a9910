
tx-geo¡úè 4

1000003422VCB"

8960134909MOMO(€·¸2VND8@Jdev-3422R203.0.113.9Z+84900003422b	ÃòçÛ‚%@æç†¦ì¬Z@jVNr7995z
mcc7995z
merchant_nameLucky Casino