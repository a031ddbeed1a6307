//! Generated code for every Plenum gRPC API. Services depend on this crate; none
//! of them runs codegen.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Serialized `FileDescriptorSet` of every Plenum proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/plenum_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("plenum.common.v1");
    }
}

pub mod broker {
    pub mod v1 {
        tonic::include_proto!("plenum.broker.v1");
    }
}

pub mod detector {
    pub mod v1 {
        tonic::include_proto!("plenum.detector.v1");
    }
}

pub mod ocr {
    pub mod v1 {
        tonic::include_proto!("plenum.ocr.v1");
    }
}

pub mod gateway {
    pub mod v1 {
        tonic::include_proto!("plenum.gateway.v1");
    }
}
