// Empty: the host simulation defines the half types in shim.h.
