/*
 * A stand-in for Windows' bcryptprimitives.dll, for running host.exe under Wine 8.0 only (the
 * Wine smoke test, windows/smoke.sh): Rust's standard library asks that library for
 * ProcessPrng, which Windows 10 and later have and Wine 8.0 lacks. It answers from
 * RtlGenRandom (advapi32's SystemFunction036), the system's random generator. Never shipped.
 */
#include <windows.h>

BOOLEAN NTAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
