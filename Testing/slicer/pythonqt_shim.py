"""``qt`` as Slicer's Python sees it (PythonQt), built on PySide6, for running module panels without Slicer.

PythonQt and PySide6 expose the same Qt classes in two dialects. This module is PythonQt's dialect over
PySide6 objects, following PythonQt's own lookup rules (MeVisLab/pythonqt, ``src/PythonQtInstanceWrapper.cpp``
``PythonQtInstanceWrapper_getattro``/``_setattro``, ``src/PythonQtClassInfo.cpp`` ``PythonQtClassInfo::member``,
``src/PythonQtSignalReceiver.cpp`` ``PythonQtSignalTarget::call``; Slicer builds PythonQt with
``PYTHONQT_SUPPORT_NAME_PROPERTY``):

- every QObject reaches Python through a :class:`Wrapped` instance; a Qt property is an attribute
  (``button.enabled = False``, ``label.text``, ``combo.currentData``, ``table.rowCount``) and it wins over a
  method of the same name (``combo.count`` is an int, as in Slicer); ``name`` is ``objectName``;
  ``exec_`` finds ``exec``; a named child is an attribute of its parent;
- setting an attribute that is no property raises ``AttributeError`` (PythonQt: "creating new attributes
  on C++ objects is not allowed"); a property that does not accept the value raises too;
- ``obj.connect("clicked(bool)", callable)`` takes a C++ signature that must exist on the object
  (PythonQt prints an error and returns False; here it raises, so a wrong signature fails the test);
  a Python function receives only as many arguments as it takes (``co_argcount``, all with ``*args``);
- an exception raised by a connected callable is caught and printed, as PythonQt does, and recorded in
  :data:`slot_errors` so that tests can fail on it;
- the stand-ins for Slicer's and CTK's widgets (``slicer_qt_standins``) are strict: besides what their Qt
  base class offers, only the properties, signals, slots and ``Q_INVOKABLE`` methods listed from their C++
  headers are visible.

Enums and flags are PySide6's (``qt.QMessageBox.Ok``, ``qt.Qt.UserRole``); value types (QIcon, QUrl,
QTableWidgetItem, ...) are PySide6 objects, as they carry no properties in PythonQt either.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import traceback
import types
import weakref
import xml.etree.ElementTree as ET
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shiboken6
from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

_QT_MODULES = (QtCore, QtGui, QtWidgets)

#: (callable, exception, formatted traceback) for every exception a connected callable raised.
slot_errors: list[tuple[Any, BaseException, str]] = []
#: URLs the code asked QDesktopServices to open (nothing is opened).
opened_urls: list[str] = []
#: Answers for QFileDialog.get*FileName / getExistingDirectory, first in first out ("" = cancelled).
file_dialog_answers: list[str] = []


class PythonQtError(AttributeError):
    """A name, signature or value that PythonQt would refuse."""


# -- wrapping ------------------------------------------------------------------------------------------
_wrappers: weakref.WeakValueDictionary[int, Wrapped] = weakref.WeakValueDictionary()


def wrap(value: Any) -> Any:
    """A QObject as PythonQt gives it to Python (one wrapper per live object); lists element-wise."""
    if isinstance(value, Wrapped) or value is None:
        return value
    if isinstance(value, QtCore.QObject):
        if not shiboken6.isValid(value):
            return None
        found = _wrappers.get(id(value))
        if found is not None and found._pq_obj is value:
            return found
        wrapper = Wrapped(value)
        _wrappers[id(value)] = wrapper
        return wrapper
    if isinstance(value, list):
        return [wrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    return value


def unwrap(value: Any) -> Any:
    if isinstance(value, Wrapped):
        return value._pq_obj
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    return value


def _qt_base(cls: type) -> type:
    """The nearest PySide6 class in the MRO (the C++ class whose full API PythonQt wraps)."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("PySide6."):
            return klass
    return QtCore.QObject


def _strict_api(obj: QtCore.QObject) -> dict[str, Any] | None:
    """The declared C++ API of a stand-in (None for PySide6's own classes)."""
    return getattr(type(obj), "PYTHONQT_API", None)


def _cpp_signature(signature: str) -> str:
    return bytes(QtCore.QMetaObject.normalizedSignature(signature).data()).decode()


def _qt_signals(obj: QtCore.QObject) -> dict[str, str]:
    """C++ signature -> Python attribute, for the signals of the object's PySide6 base class."""
    meta = _qt_base(type(obj)).staticMetaObject
    found = {}
    for i in range(meta.methodCount()):
        method = meta.method(i)
        if method.methodType() == QtCore.QMetaMethod.MethodType.Signal:
            found[bytes(method.methodSignature().data()).decode()] = bytes(method.name().data()).decode()
    return found


def _signals(obj: QtCore.QObject) -> dict[str, str]:
    signals = _qt_signals(obj)
    api = _strict_api(obj)
    if api is not None:
        signals.update({_cpp_signature(k): v for k, v in api.get("signals", {}).items()})
    return signals


def _slots(obj: QtCore.QObject) -> dict[str, str]:
    """C++ slot signature -> Python attribute (stand-ins: declared slots; Qt classes: their meta slots)."""
    api = _strict_api(obj)
    found = {}
    meta = _qt_base(type(obj)).staticMetaObject
    for i in range(meta.methodCount()):
        method = meta.method(i)
        if method.methodType() in (QtCore.QMetaMethod.MethodType.Slot, QtCore.QMetaMethod.MethodType.Method):
            found[bytes(method.methodSignature().data()).decode()] = bytes(method.name().data()).decode()
    if api is not None:
        found.update({_cpp_signature(k): v for k, v in api.get("slots", {}).items()})
    return found


def _property_index(obj: QtCore.QObject, name: str) -> int:
    if name == "singleShot" and isinstance(obj, QtCore.QTimer):
        return -1  # PythonQt hides QTimer's singleShot property (setSingleShot / isSingleShot instead)
    return obj.metaObject().indexOfProperty(name)


def _positional_count(func: Any) -> int | None:
    """How many signal arguments PythonQt passes to ``func`` (None: all of them)."""
    target = func.__func__ if inspect.ismethod(func) else func
    if not inspect.isfunction(target):
        return None
    code = target.__code__
    if code.co_flags & inspect.CO_VARARGS:
        return None
    return code.co_argcount - (1 if inspect.ismethod(func) else 0)


def _call_python(func: Any, args: tuple) -> None:
    count = _positional_count(func)
    if count is not None:
        args = args[:count]
    try:
        func(*[wrap(a) for a in args])
    except Exception as exc:  # noqa: BLE001 - PythonQt prints the error and goes on; tests look at slot_errors
        text = traceback.format_exc()
        slot_errors.append((func, exc, text))
        print(f"PythonQt: exception in a slot connected from Qt:\n{text}", file=sys.stderr)


_SIGNATURE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$")


class Wrapped:
    """A QObject seen through PythonQt."""

    __slots__ = ("__weakref__", "_pq_connections", "_pq_obj")

    def __init__(self, obj: QtCore.QObject) -> None:
        object.__setattr__(self, "_pq_obj", obj)
        object.__setattr__(self, "_pq_connections", [])

    # identity and truth: by the C++ object
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Wrapped) and other._pq_obj is self._pq_obj

    def __hash__(self) -> int:
        return id(self._pq_obj)

    def __bool__(self) -> bool:
        return shiboken6.isValid(self._pq_obj)

    def __repr__(self) -> str:
        obj = self._pq_obj
        name = obj.objectName() if shiboken6.isValid(obj) else "deleted"
        return f"<{self.className()} '{name}' (PythonQt dialect)>"

    def className(self) -> str:
        return self._pq_obj.metaObject().className()

    # -- attributes -------------------------------------------------------------------------------
    def _pq_method(self, name: str) -> Any:
        obj = self._pq_obj
        api = _strict_api(obj)
        if api is not None:
            declared = set(api.get("slots", {}).values()) | set(api.get("invokables", ()))
            if name not in declared and not hasattr(_qt_base(type(obj)), name):
                return None
        elif name.startswith("_") or not hasattr(type(obj), name):
            return None
        attr = getattr(obj, name, None)
        if attr is None:
            return None
        if isinstance(attr, QtCore.SignalInstance):
            return _SignalProxy(self, attr)
        if not callable(attr):
            return None

        def call(*args: Any, **kwargs: Any) -> Any:
            return wrap(attr(*unwrap(args), **unwrap(kwargs)))

        call.__name__ = name
        return call

    def __getattr__(self, name: str) -> Any:
        obj = self._pq_obj
        if not shiboken6.isValid(obj):
            raise ValueError(f"Trying to read '{name}' from a destroyed object")
        if name == "name":
            return obj.objectName()
        if _property_index(obj, name) >= 0:
            return wrap(obj.property(name))
        if name.endswith("_") and not name.endswith("__"):
            method = self._pq_method(name[:-1])  # exec_ -> exec (C++ has no exec_; PySide6's alias is not used)
        else:
            method = self._pq_method(name)
        if method is not None:
            return method
        if name.encode() in [bytes(n.data()) for n in obj.dynamicPropertyNames()]:
            return wrap(obj.property(name))
        for child in obj.children():
            if child.objectName() == name:
                return wrap(child)
        raise PythonQtError(f"{self.className()} has no attribute named '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        obj = self._pq_obj
        if not shiboken6.isValid(obj):
            raise PythonQtError(f"Trying to set '{name}' on a destroyed object")
        if name == "name":
            name = "objectName"
        index = _property_index(obj, name)
        if index >= 0:
            prop = obj.metaObject().property(index)
            if not prop.isWritable():
                raise PythonQtError(f"Property '{name}' of {self.className()} object is not writable")
            if not obj.setProperty(name, unwrap(value)):
                raise PythonQtError(f"Property '{name}' of type '{prop.typeName()}' does not accept an object of "
                                    f"type {type(value).__name__} ({value!r})")
            return
        if self._pq_method(name) is not None:
            raise PythonQtError(f"Slot '{name}' can not be overwritten on {self.className()} object")
        if name.encode() in [bytes(n.data()) for n in obj.dynamicPropertyNames()]:
            obj.setProperty(name, unwrap(value))
            return
        raise PythonQtError(f"'{name}' does not exist on {self.className()} and creating new attributes on C++ "
                            "objects is not allowed")

    # -- signals ---------------------------------------------------------------------------------
    def _pq_signal(self, signature: str) -> QtCore.SignalInstance:
        obj = self._pq_obj
        normalized = _cpp_signature(signature)
        attribute = _signals(obj).get(normalized)
        if attribute is None:
            raise PythonQtError(f"QObject::connect(): signal '{normalized}' does not exist on {self.className()}")
        instance = getattr(obj, attribute)
        match = _SIGNATURE.match(normalized)
        arguments = match.group(2) if match else ""
        if attribute == "currentIndexChanged" and isinstance(obj, QtWidgets.QComboBox):
            pass  # one PySide6 signal per name: the (int) overload is the only one Qt 6 has
        elif arguments and isinstance(instance, QtCore.SignalInstance) and _strict_api(obj) is None:
            try:  # pick the overload, e.g. valueChanged(int) vs valueChanged(QString) in Qt 5
                instance = instance[tuple(_pyside_type(t) for t in arguments.split(","))]
            except (KeyError, TypeError, IndexError):
                pass
        return instance

    def connect(self, signal: str, target: Any, slot: str | None = None) -> bool:
        """``obj.connect("signal(args)", callable)`` or ``obj.connect("signal(args)", receiver, "slot(args)")``."""
        instance = self._pq_signal(signal)
        if slot is not None:
            receiver = unwrap(target)
            normalized = _cpp_signature(slot)
            attribute = _slots(receiver).get(normalized)
            if attribute is None:
                raise PythonQtError(f"QObject::connect(): slot '{normalized}' does not exist on "
                                    f"{receiver.metaObject().className()}")
            method = getattr(receiver, attribute)

            def handler(*args: Any, _method: Any = method) -> None:
                _call_python(lambda *a: _method(*unwrap(a)), args)
        else:
            if not callable(target):
                raise PythonQtError(f"connect: {target!r} is not callable")

            def handler(*args: Any, _target: Any = target) -> None:
                _call_python(_target, args)

        instance.connect(handler)
        self._pq_connections.append((_cpp_signature(signal), target, slot, instance, handler))
        return True

    def disconnect(self, signal: str, target: Any = None, slot: str | None = None) -> bool:
        normalized = _cpp_signature(signal)
        kept, removed = [], False
        for entry in self._pq_connections:
            if entry[0] == normalized and (target is None or entry[1] == target) and entry[2] == slot:
                entry[3].disconnect(entry[4])
                removed = True
            else:
                kept.append(entry)
        self._pq_connections[:] = kept
        return removed


_PYSIDE_TYPES = {"int": int, "bool": bool, "double": float, "float": float, "QString": str}


def _pyside_type(cpp: str) -> Any:
    cpp = cpp.strip().removeprefix("const ").removesuffix("&").strip()
    return _PYSIDE_TYPES.get(cpp, cpp)


class _SignalProxy:
    """``obj.someSignal`` in PythonQt: ``.connect(callable)`` / ``.disconnect(callable)`` / call to emit."""

    def __init__(self, owner: Wrapped, instance: QtCore.SignalInstance) -> None:
        self._owner, self._instance, self._handlers = owner, instance, {}

    def connect(self, target: Any) -> bool:
        def handler(*args: Any) -> None:
            _call_python(target, args)

        self._handlers[id(target)] = handler
        self._instance.connect(handler)
        return True

    def disconnect(self, target: Any) -> None:
        handler = self._handlers.pop(id(target), None)
        if handler is not None:
            self._instance.disconnect(handler)

    def __call__(self, *args: Any) -> None:
        self._instance.emit(*unwrap(args))


# -- classes ------------------------------------------------------------------------------------------
class QtClass:
    """``qt.QSomething``: constructing gives a wrapped object; enums and static methods pass through."""

    def __init__(self, cls: type, overrides: dict[str, Any] | None = None) -> None:
        self._cls = cls
        self._overrides = overrides or {}
        self.__name__ = cls.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return wrap(self._cls(*unwrap(args), **unwrap(kwargs)))

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            attr = getattr(self._cls, name)
        except AttributeError:
            raise PythonQtError(f"{self._cls.__name__} has no attribute named '{name}'") from None
        if callable(attr) and not isinstance(attr, type) and not hasattr(attr, "__members__"):
            def static(*args: Any, **kwargs: Any) -> Any:
                return wrap(attr(*unwrap(args), **unwrap(kwargs)))
            return static
        return attr

    def __instancecheck__(self, instance: Any) -> bool:
        return isinstance(unwrap(instance), self._cls)

    def __repr__(self) -> str:
        return f"<PythonQt class {self._cls.__name__}>"


def _file_dialog_answer(*args: Any, **kwargs: Any) -> str:
    """PythonQt returns the chosen path as a str (PySide6: a (path, filter) tuple)."""
    return file_dialog_answers.pop(0) if file_dialog_answers else ""


def _open_url(url: Any) -> bool:
    opened_urls.append(url.toString() if hasattr(url, "toString") else str(url))
    return True


_OVERRIDES: dict[str, dict[str, Any]] = {
    "QFileDialog": {"getOpenFileName": _file_dialog_answer, "getSaveFileName": _file_dialog_answer,
                    "getExistingDirectory": _file_dialog_answer},
    "QDesktopServices": {"openUrl": _open_url},
}


# -- loading .ui files -----------------------------------------------------------------------------------
_STANDINS: dict[str, type] = {}


def register_standins(classes: dict[str, type]) -> None:
    """The stand-in classes QUiLoader creates for Slicer's and CTK's widgets in .ui files."""
    _STANDINS.update(classes)


def _xml_value(element: ET.Element, standin: type | None = None) -> Any:
    kind = element.tag
    text = element.text or ""
    if kind == "bool":
        return text.strip() == "true"
    if kind == "number":
        return int(text)
    if kind == "double":
        return float(text)
    if kind == "string":
        return text
    if kind == "stringlist":
        return [s.text or "" for s in element.findall("string")]
    if kind in ("set", "enum"):
        enums = getattr(standin, "PYTHONQT_ENUMS", {})
        value = 0
        for part in text.split("|"):
            key = part.strip().split("::")[-1]
            if key not in enums:
                raise PythonQtError(f"{standin.__name__ if standin else '?'}: unknown enum value {part.strip()}")
            value |= enums[key]
        return value
    raise PythonQtError(f"unsupported .ui property type <{kind}>")


class QUiLoader:
    """``qt.QUiLoader``: PySide6's loader creating the stand-ins, then the stand-ins' properties set
    strictly (an unknown one raises) and the .ui file's signal/slot connections made strictly."""

    def load(self, device: Any, parent: Any = None) -> Any:
        device = unwrap(device)
        if isinstance(device, QtCore.QIODevice):
            data = bytes(device.readAll().data())
        else:
            with open(device, "rb") as f:
                data = f.read()
        root = ET.fromstring(data)
        deferred: list[tuple[str, str, ET.Element]] = []
        for widget in root.iter("widget"):
            cls = _STANDINS.get(widget.get("class", ""))
            if cls is None:
                continue
            for prop in list(widget.findall("property")):
                if prop.get("name") in ("geometry",):
                    continue
                deferred.append((widget.get("name", ""), prop.get("name", ""), prop))
                widget.remove(prop)
        connections = [(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
                       for c in root.findall("./connections/connection")]
        for element in root.findall("connections"):
            root.remove(element)
        loader = QtUiTools.QUiLoader()
        for cls in _STANDINS.values():
            loader.registerCustomWidget(cls)
        buffer = QtCore.QBuffer()
        buffer.setData(QtCore.QByteArray(ET.tostring(root, encoding="utf-8")))
        buffer.open(QtCore.QIODevice.OpenModeFlag.ReadOnly)
        widget = loader.load(buffer, unwrap(parent))
        if widget is None:
            raise RuntimeError(f"QUiLoader: {loader.errorString()}")

        def find(name: str) -> QtCore.QObject:
            if widget.objectName() == name:
                return widget
            found = widget.findChild(QtCore.QObject, name)
            if found is None:
                raise PythonQtError(f".ui: no object named {name}")
            return found

        for name, prop_name, prop in deferred:
            target = find(name)
            if not isinstance(target, tuple(_STANDINS.values())):
                raise PythonQtError(f".ui: {name} was not created as a stand-in ({type(target).__name__})")
            value = _xml_value(prop[0], type(target))
            setattr(wrap(target), prop_name, value)
        for sender, signal, receiver, slot in connections:
            wrap(find(sender)).connect(signal, wrap(find(receiver)), slot)
        return wrap(widget)


# -- the module ----------------------------------------------------------------------------------------
class _QtModule(types.ModuleType):
    """``import qt``: Qt's classes by name, in PythonQt's dialect."""

    QUiLoader = QUiLoader

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for module in _QT_MODULES:
            cls = getattr(module, name, None)
            if cls is None:
                continue
            value = QtClass(cls, _OVERRIDES.get(name)) if isinstance(cls, type) and name != "Qt" else cls
            setattr(self, name, value)
            return value
        raise AttributeError(f"module 'qt' has no attribute '{name}'")


def qt_module() -> types.ModuleType:
    module = sys.modules.get("qt")
    if isinstance(module, _QtModule):
        return module
    return _QtModule("qt", __doc__)


def application() -> QtWidgets.QApplication:
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(["pythonqt_shim"])
    return app
