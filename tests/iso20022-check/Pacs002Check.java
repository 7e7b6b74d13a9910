// Reads pacs.002 files with Prowide ISO 20022 (pw-iso20022, Maven Central),
// an implementation independent of fraudline, and prints what it parsed:
//
//   msg FILE TYPE MSGID ORGNL_MSG_ID ORGNL_MSG_NM_ID
//   tx OrgnlEndToEndId OrgnlTxId OrgnlUETR TxSts RsnCd AddtlInf|AddtlInf...
//
// ("-" for an absent value). tests/iso20022.rs asserts on these lines.
// Exits 1 when a file is not a pacs.002 Prowide can read, or reports no
// transaction: a check that read nothing never passes.
//
//   java -cp "$TOOLS/iso20022-check/lib/*" Pacs002Check.java FILE...
import com.prowidesoftware.swift.model.mx.AbstractMX;
import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

public class Pacs002Check {
    /** obj.getName(), for any pacs.002 version (the getters share names). */
    static Object get(Object obj, String name) throws Exception {
        if (obj == null) return null;
        Method m = obj.getClass().getMethod(name);
        return m.invoke(obj);
    }

    static String str(Object o) {
        if (o == null) return "-";
        String s = o.toString();
        return s.isEmpty() ? "-" : s;
    }

    public static void main(String[] args) throws Exception {
        int failed = 0;
        for (String file : args) {
            String xml = Files.readString(Path.of(file), StandardCharsets.UTF_8);
            AbstractMX mx = AbstractMX.parse(xml);
            if (mx == null || !mx.getMxId().id().startsWith("pacs.002")) {
                System.out.println("error " + file + " not a pacs.002 Prowide can read");
                failed++;
                continue;
            }
            Object rpt = get(mx, "getFIToFIPmtStsRpt");
            Object hdr = get(rpt, "getGrpHdr");
            Object orgnl = get(rpt, "getOrgnlGrpInfAndSts");
            if (orgnl instanceof List<?> l) orgnl = l.isEmpty() ? null : l.get(0);
            System.out.println("msg " + file + " " + mx.getMxId().id() + " " + str(get(hdr, "getMsgId"))
                + " " + str(get(orgnl, "getOrgnlMsgId")) + " " + str(get(orgnl, "getOrgnlMsgNmId")));
            List<?> txs = (List<?>) get(rpt, "getTxInfAndSts");
            if (txs == null || txs.isEmpty()) {
                System.out.println("error " + file + " has no TxInfAndSts");
                failed++;
                continue;
            }
            for (Object tx : txs) {
                String rsn = "-";
                List<String> addtl = new ArrayList<>();
                List<?> infs = (List<?>) get(tx, "getStsRsnInf");
                if (infs != null) {
                    for (Object inf : infs) {
                        Object r = get(inf, "getRsn");
                        if (r != null) rsn = str(get(r, "getCd"));
                        List<?> a = (List<?>) get(inf, "getAddtlInf");
                        if (a != null) for (Object s : a) addtl.add(s.toString());
                    }
                }
                System.out.println("tx " + str(get(tx, "getOrgnlEndToEndId")) + " " + str(get(tx, "getOrgnlTxId"))
                    + " " + str(get(tx, "getOrgnlUETR")) + " " + str(get(tx, "getTxSts")) + " " + rsn
                    + " " + (addtl.isEmpty() ? "-" : String.join("|", addtl)));
            }
        }
        System.exit(failed == 0 ? 0 : 1);
    }
}
