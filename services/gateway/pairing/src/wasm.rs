//! The browser's side of pairing, as a dependency-free WebAssembly module
//! (`pairing.wasm`, loaded by the web app's `pairing.js`).
//!
//! One pairing at a time per page. JavaScript copies inputs into memory from
//! `lb_alloc`, calls a step, and reads the step's output from `lb_out_ptr`/`lb_out_len`.
//! Steps return 0 on success or a negative error (see `Status`). Randomness comes from
//! the page (`crypto.getRandomValues`, available even on plain HTTP): a 32-byte seed
//! per pairing feeds ChaCha20.
//!
//! `lb_seal_stored` and `lb_open_stored` seal and open what the app keeps on the phone
//! (`phone_storage`), with the key the box hands out on its USB link.

use crate::{phone_storage, PhoneHandshake, SessionKeys, SetupCode};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::cell::RefCell;

#[repr(i32)]
enum Status {
    Ok = 0,
    CodeFormat = -1,
    CodeWeak = -2,
    BadMessage = -3,
    WrongCode = -4,
    BadSeal = -5,
    OutOfOrder = -6,
}

#[derive(Default)]
struct State {
    handshake: Option<PhoneHandshake>,
    keys: Option<(SessionKeys, Vec<u8>)>,
    out: Vec<u8>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// # Safety
/// Called from JavaScript only; the pointer/length pairs name memory from `lb_alloc`.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

#[no_mangle]
pub extern "C" fn lb_alloc(len: usize) -> *mut u8 {
    let mut buf = vec![0u8; len].into_boxed_slice();
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr
}

/// # Safety
/// `ptr` and `len` come from one `lb_alloc` call.
#[no_mangle]
pub unsafe extern "C" fn lb_free(ptr: *mut u8, len: usize) {
    drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)));
}

#[no_mangle]
pub extern "C" fn lb_out_ptr() -> *const u8 {
    STATE.with(|s| s.borrow().out.as_ptr())
}

#[no_mangle]
pub extern "C" fn lb_out_len() -> usize {
    STATE.with(|s| s.borrow().out.len())
}

/// Step 1: the typed code and a 32-byte seed in; the phone's message `A` out.
///
/// # Safety
/// See `bytes`; `seed` points at 32 bytes.
#[no_mangle]
pub unsafe extern "C" fn lb_start(code: *const u8, code_len: usize, seed: *const u8) -> i32 {
    let Ok(text) = std::str::from_utf8(bytes(code, code_len)) else {
        return Status::CodeFormat as i32;
    };
    let code = match SetupCode::parse(text) {
        Ok(code) => code,
        Err(crate::CodeError::Format) => return Status::CodeFormat as i32,
        Err(crate::CodeError::Weak) => return Status::CodeWeak as i32,
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes.copy_from_slice(bytes(seed, 32));
    let mut rng = ChaCha20Rng::from_seed(seed_bytes);
    let (handshake, message) = PhoneHandshake::start(&code, &mut rng);
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.handshake = Some(handshake);
        s.keys = None;
        s.out = message;
    });
    Status::Ok as i32
}

/// Step 2 received: the box's message and the session id in; the phone's proof out.
///
/// # Safety
/// See `bytes`.
#[no_mangle]
pub unsafe extern "C" fn lb_finish(
    message: *const u8,
    message_len: usize,
    session: *const u8,
    session_len: usize,
) -> i32 {
    let (message, session) = (bytes(message, message_len), bytes(session, session_len));
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let Some(handshake) = s.handshake.take() else {
            return Status::OutOfOrder as i32;
        };
        match handshake.finish(message) {
            Ok(keys) => {
                s.out = keys.phone_proof(session);
                s.keys = Some((keys, session.to_vec()));
                Status::Ok as i32
            }
            Err(_) => Status::BadMessage as i32,
        }
    })
}

/// Step 4 received: the box's proof and the sealed credential in; the credential
/// (JSON) out, only if the box proved it knows the code.
///
/// # Safety
/// See `bytes`.
#[no_mangle]
pub unsafe extern "C" fn lb_open(
    proof: *const u8,
    proof_len: usize,
    sealed: *const u8,
    sealed_len: usize,
) -> i32 {
    let (proof, sealed) = (bytes(proof, proof_len), bytes(sealed, sealed_len));
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let Some((keys, session)) = s.keys.take() else {
            return Status::OutOfOrder as i32;
        };
        if keys.verify_box_proof(&session, proof).is_err() {
            return Status::WrongCode as i32;
        }
        match keys.open(&session, sealed) {
            Ok(plain) => {
                s.out = plain;
                Status::Ok as i32
            }
            Err(_) => Status::BadSeal as i32,
        }
    })
}

/// The box's storage key, a 24-byte random nonce and a value in; the sealed value out.
///
/// # Safety
/// See `bytes`.
#[no_mangle]
pub unsafe extern "C" fn lb_seal_stored(
    key: *const u8,
    key_len: usize,
    nonce: *const u8,
    nonce_len: usize,
    value: *const u8,
    value_len: usize,
) -> i32 {
    let (Ok(key), Ok(nonce)) = (
        <&[u8; phone_storage::KEY_LEN]>::try_from(bytes(key, key_len)),
        <&[u8; phone_storage::NONCE_LEN]>::try_from(bytes(nonce, nonce_len)),
    ) else {
        return Status::BadMessage as i32;
    };
    let sealed = phone_storage::seal(key, nonce, bytes(value, value_len));
    STATE.with(|s| s.borrow_mut().out = sealed);
    Status::Ok as i32
}

/// The box's storage key and a sealed value in; the value out, only if this key
/// sealed it and nothing changed since.
///
/// # Safety
/// See `bytes`.
#[no_mangle]
pub unsafe extern "C" fn lb_open_stored(
    key: *const u8,
    key_len: usize,
    sealed: *const u8,
    sealed_len: usize,
) -> i32 {
    let Ok(key) = <&[u8; phone_storage::KEY_LEN]>::try_from(bytes(key, key_len)) else {
        return Status::BadMessage as i32;
    };
    match phone_storage::open(key, bytes(sealed, sealed_len)) {
        Ok(value) => {
            STATE.with(|s| s.borrow_mut().out = value);
            Status::Ok as i32
        }
        Err(_) => Status::BadSeal as i32,
    }
}
