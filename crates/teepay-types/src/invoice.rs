//! Invoices and proof of payment (DESIGN §11): what a payee's enclave signs to ask for a
//! payment, and what it signs once paid. Both travel as printable strings: bech32m (a
//! checksum that catches any typo of up to four characters) over their canonical encoding,
//! with a prefix that says which of the two it is.
//!
//! Only the types, their signatures and their strings live here; which invoice is open, paid
//! or expired is the payee enclave's state, like the orders it issues.

use crate::asset::Asset;
use crate::crypto::{Signature, SigningKey, keccak256_parts, verify_signer};
use crate::ids::{Address, Amount, ChainId, Hash32, InstanceId};
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32m, Hrp};
use borsh::{BorshDeserialize, BorshSerialize};

/// A payee's request for a payment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Invoice {
    pub payee: Address,
    pub chain: ChainId,
    pub asset: Asset,
    /// `None`: any amount, the payer chooses.
    pub amount: Option<Amount>,
    /// keccak256 of the memo the payee keeps (the memo itself stays private).
    pub memo_hash: Hash32,
    /// Payee-clock time (ms) after which the payee's enclave refuses to be paid.
    pub expires_at: u64,
    /// Unique per payee enclave.
    pub nonce: u64,
}

impl Invoice {
    /// What identifies the invoice (and what the payee signs).
    pub fn id(&self) -> Hash32 {
        keccak256_parts(&[b"teepay/invoice/v1", &borsh::to_vec(self).expect("writing to a Vec never fails")])
    }

    pub fn sign(self, payee: &SigningKey) -> SignedInvoice {
        let signature = payee.sign_digest(&self.id());
        SignedInvoice { invoice: self, signature }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    #[error("not a teepay {expected}: {why}")]
    NotEncoded { expected: &'static str, why: String },
    #[error("not signed by the payee it names")]
    BadSignature,
}

/// Prefix of an invoice string.
pub const INVOICE_HRP: &str = "teepay";
/// Prefix of a receipt string.
pub const RECEIPT_HRP: &str = "teepayrcpt";

fn to_bech32m<T: BorshSerialize>(hrp: &str, value: &T) -> String {
    let hrp = Hrp::parse(hrp).expect("a valid constant prefix");
    let bytes = borsh::to_vec(value).expect("writing to a Vec never fails");
    bech32::encode::<Bech32m>(hrp, &bytes).expect("an invoice or receipt is far below the length limit")
}

fn from_bech32m<T: BorshDeserialize>(hrp: &str, expected: &'static str, s: &str) -> Result<T, InvoiceError> {
    let bad = |why: String| InvoiceError::NotEncoded { expected, why };
    let checked = CheckedHrpstring::new::<Bech32m>(s.trim()).map_err(|e| bad(e.to_string()))?;
    // Either case reads (QR codes use upper case), never a mix (the checksum's rule).
    if checked.hrp().to_lowercase() != hrp {
        return Err(bad(format!("prefix {:?}, expected {hrp:?}", checked.hrp().as_str())));
    }
    let bytes: Vec<u8> = checked.byte_iter().collect();
    borsh::from_slice(&bytes).map_err(|e| bad(format!("malformed contents: {e}")))
}

/// An invoice signed by its payee's enclave.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct SignedInvoice {
    pub invoice: Invoice,
    pub signature: Signature,
}

impl SignedInvoice {
    /// True iff the payee the invoice names signed it.
    pub fn verify(&self) -> Result<(), InvoiceError> {
        if verify_signer(&self.invoice.id(), &self.signature, self.invoice.payee) {
            Ok(())
        } else {
            Err(InvoiceError::BadSignature)
        }
    }

    /// The printable form: `teepay1…` (bech32m).
    pub fn encode(&self) -> String {
        to_bech32m(INVOICE_HRP, self)
    }

    /// Parses a printable invoice and checks its payee's signature.
    pub fn decode(s: &str) -> Result<Self, InvoiceError> {
        let invoice: Self = from_bech32m(INVOICE_HRP, "invoice", s)?;
        invoice.verify()?;
        Ok(invoice)
    }
}

/// Proof of payment: the payee's enclave signs it when the instance that paid the invoice
/// is CONFIRMed. Anyone can check it against the invoice's payee.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct PaymentReceipt {
    pub invoice: Hash32,
    pub instance: InstanceId,
    pub amount: Amount,
    pub payer: Address,
    pub payee: Address,
    pub signature: Signature,
}

fn receipt_digest(invoice: &Hash32, instance: &InstanceId, amount: Amount, payer: Address) -> Hash32 {
    keccak256_parts(&[b"teepay/receipt/v1", invoice, &instance.0, &amount.0.to_be_bytes(), &payer.0])
}

impl PaymentReceipt {
    pub fn sign(
        payee: &SigningKey,
        invoice: Hash32,
        instance: InstanceId,
        amount: Amount,
        payer: Address,
    ) -> Self {
        let signature = payee.sign_digest(&receipt_digest(&invoice, &instance, amount, payer));
        PaymentReceipt { invoice, instance, amount, payer, payee: payee.address(), signature }
    }

    /// True iff the payee it names signed every field.
    pub fn verify(&self) -> Result<(), InvoiceError> {
        let digest = receipt_digest(&self.invoice, &self.instance, self.amount, self.payer);
        if verify_signer(&digest, &self.signature, self.payee) {
            Ok(())
        } else {
            Err(InvoiceError::BadSignature)
        }
    }

    /// The receipt proves payment of `invoice`: the same invoice, signed by its payee, and
    /// at least its amount.
    pub fn proves_payment_of(&self, invoice: &SignedInvoice) -> bool {
        self.verify().is_ok()
            && self.invoice == invoice.invoice.id()
            && self.payee == invoice.invoice.payee
            && invoice.invoice.amount.is_none_or(|asked| self.amount >= asked)
    }

    /// The printable form: `teepayrcpt1…` (bech32m).
    pub fn encode(&self) -> String {
        to_bech32m(RECEIPT_HRP, self)
    }

    pub fn decode(s: &str) -> Result<Self, InvoiceError> {
        let receipt: Self = from_bech32m(RECEIPT_HRP, "receipt", s)?;
        receipt.verify()?;
        Ok(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payee() -> SigningKey {
        SigningKey::from_entropy([0x31; 32]).unwrap()
    }

    fn invoice(amount: Option<u128>) -> SignedInvoice {
        Invoice {
            payee: payee().address(),
            chain: ChainId(31337),
            asset: Asset::Native,
            amount: amount.map(Amount),
            memo_hash: crate::crypto::keccak256(b"order #42"),
            expires_at: 1_000_000,
            nonce: 7,
        }
        .sign(&payee())
    }

    #[test]
    fn an_invoice_string_reads_back_and_catches_typos_and_forgeries() {
        let signed = invoice(Some(25));
        let s = signed.encode();
        assert!(s.starts_with("teepay1"), "{s}");
        assert_eq!(SignedInvoice::decode(&s).unwrap(), signed);
        assert_eq!(
            SignedInvoice::decode(&s.to_uppercase()).unwrap(),
            signed,
            "case-insensitive, for QR codes"
        );
        // One character changed anywhere: the checksum catches it.
        let mut typo = s.clone().into_bytes();
        let i = s.len() / 2;
        typo[i] = if typo[i] == b'q' { b'p' } else { b'q' };
        assert!(SignedInvoice::decode(std::str::from_utf8(&typo).unwrap()).is_err());
        // A well-formed invoice whose amount someone changed and re-encoded: the payee's
        // signature no longer matches.
        let mut altered = signed.clone();
        altered.invoice.amount = Some(Amount(1));
        assert_eq!(SignedInvoice::decode(&altered.encode()).unwrap_err(), InvoiceError::BadSignature);
        // Signed by someone else in the payee's name.
        let impostor = SigningKey::from_entropy([0x32; 32]).unwrap();
        let forged = signed.invoice.clone().sign(&impostor);
        assert_eq!(SignedInvoice::decode(&forged.encode()).unwrap_err(), InvoiceError::BadSignature);
        // A receipt is not an invoice, nor any other string.
        for bad in ["", "teepay1", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "hello"] {
            assert!(SignedInvoice::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_receipt_proves_payment_only_of_its_own_invoice() {
        let asked = invoice(Some(25));
        let payer = Address([9; 20]);
        let instance = InstanceId([3; 32]);
        let receipt = PaymentReceipt::sign(&payee(), asked.invoice.id(), instance, Amount(25), payer);
        let s = receipt.encode();
        assert!(s.starts_with("teepayrcpt1"), "{s}");
        assert_eq!(PaymentReceipt::decode(&s).unwrap(), receipt);
        assert!(receipt.proves_payment_of(&asked));
        assert!(!receipt.proves_payment_of(&invoice(Some(26))), "another invoice");
        let short = PaymentReceipt::sign(&payee(), asked.invoice.id(), instance, Amount(24), payer);
        assert!(!short.proves_payment_of(&asked), "less than the invoice asked");
        assert!(
            PaymentReceipt::sign(&payee(), invoice(None).invoice.id(), instance, Amount(1), payer)
                .proves_payment_of(&invoice(None)),
            "an any-amount invoice takes any amount"
        );
        let mut inflated = receipt.clone();
        inflated.amount = Amount(1_000);
        assert_eq!(PaymentReceipt::decode(&inflated.encode()).unwrap_err(), InvoiceError::BadSignature);
        assert!(SignedInvoice::decode(&s).is_err(), "a receipt string is not an invoice");
    }
}
